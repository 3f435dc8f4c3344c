"""Test harness: a throwaway Dovecot (dovecot), TLS material (tlsca), a
fault-injecting TCP proxy (proxy), real imapfs mounts (mount) and the shared
mail corpus (corpus).  Import as ``tests.support.<module>``."""
