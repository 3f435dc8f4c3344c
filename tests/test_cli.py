"""Command line parsing: SOURCE URLs, flags, -o options, sizes (no I/O)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from imapfs.cli import USAGE, Config, HelpRequested, VersionRequested, parse_args, parse_size, parse_source
from imapfs.errors import ConfigError

SRC = "imaps://alice@mail.example.org/"
MNT = "/mnt/mail"


def args(*opts: str, source: str = SRC) -> Config:
    """parse_args with SOURCE and MOUNTPOINT, then *opts*."""
    return parse_args([source, MNT, *opts])


def refused(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_args(argv)
    return str(ei.value)


# --------------------------------------------------------------- SOURCE URL

@pytest.mark.parametrize("source, expected", [
    ("imaps://alice@mail.example.org/", ("imaps", "alice", "mail.example.org", 993)),
    ("imaps://alice@mail.example.org", ("imaps", "alice", "mail.example.org", 993)),
    ("imaps://alice@mail.example.org:10993/", ("imaps", "alice", "mail.example.org", 10993)),
    ("imap://alice@mail.example.org/", ("imap", "alice", "mail.example.org", 143)),
    ("imap://alice@mail.example.org:1143", ("imap", "alice", "mail.example.org", 1143)),
    ("imap://alice@127.0.0.1:143/", ("imap", "alice", "127.0.0.1", 143)),
    ("imaps://alice@[::1]/", ("imaps", "alice", "::1", 993)),
    ("imaps://alice@[::1]:1993/", ("imaps", "alice", "::1", 1993)),
    ("imap://bob@[2001:db8::25]:143", ("imap", "bob", "2001:db8::25", 143)),
    ("imaps://alice%40example.org@mail.example.org/",
     ("imaps", "alice@example.org", "mail.example.org", 993)),
    ("imaps://alice%2Bfoo%40example.org@mail.example.org/",
     ("imaps", "alice+foo@example.org", "mail.example.org", 993)),
    ("imaps://j%C3%BCrgen@mail.example.org/", ("imaps", "jürgen", "mail.example.org", 993)),
    ("imaps://first%20last@mail.example.org/", ("imaps", "first last", "mail.example.org", 993)),
    # Scheme and host name are case-insensitive (urlsplit lower-cases both).
    ("IMAPS://Alice@Mail.Example.ORG/", ("imaps", "Alice", "mail.example.org", 993)),
    ("imaps://alice@mail.example.org:65535/", ("imaps", "alice", "mail.example.org", 65535)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_parse_source_accepts(source, expected):
    assert parse_source(source) == expected
    cfg = args(source=source)
    assert (cfg.scheme, cfg.user, cfg.host, cfg.port) == expected
    assert cfg.source == source
    assert cfg.label == f"{expected[1]}@{expected[2]}:{expected[3]}"


@pytest.mark.parametrize("source, needle", [
    ("pop3://alice@mail.example.org/", "imaps://"),
    ("https://alice@mail.example.org/", "imaps://"),
    ("mail.example.org", "imaps://"),
    ("alice@mail.example.org", "imaps://"),
    ("imaps:/alice@mail.example.org", "user"),
    ("", "imaps://"),
    ("imaps://mail.example.org/", "user"),
    ("imap://@mail.example.org/", "user"),
    ("imaps://alice@/", "host"),
    ("imaps://alice@:993/", "host"),
    ("imaps://alice@mail.example.org/INBOX", "folder"),
    ("imaps://alice@mail.example.org/Archive/2024", "folder"),
    ("imaps://alice@mail.example.org//", "folder"),
    ("imaps://alice@mail.example.org:99999/", "SOURCE"),
    ("imaps://alice@mail.example.org:port/", "SOURCE"),
    ("imaps://alice@[::1/", "SOURCE"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_parse_source_refuses(source, needle):
    with pytest.raises(ConfigError) as ei:
        parse_source(source)
    assert needle in str(ei.value)
    assert needle in refused([source, MNT])


PASSWORD = "s3cr3t-Hunter2"


@pytest.mark.parametrize("source", [
    f"imaps://alice:{PASSWORD}@mail.example.org/",
    f"imap://alice:{PASSWORD}@mail.example.org:143/",
    f"imaps://alice%40example.org:{PASSWORD}@[::1]/",
    f"imaps://:{PASSWORD}@mail.example.org/",
    f"imaps://alice:{PASSWORD}@mail.example.org/INBOX",
    f"imaps://alice:{PASSWORD}@/",
    # Malformed in another way too: these used to fail *before* the password
    # check with a message quoting the whole SOURCE.
    f"imaps://alice:{PASSWORD}@mail.example.org:notaport/",
    f"imaps://alice:{PASSWORD}@mail.example.org:99999/",
    f"imaps://alice:{PASSWORD}@[::1/",
    f"ftp://alice:{PASSWORD}@mail.example.org/",
    f"ftp://alice@example.org:{PASSWORD}@mail.example.org/",
], ids=range(11))
def test_password_in_url_is_refused_without_echoing_it(source):
    msg = refused([source, MNT])
    assert PASSWORD not in msg
    assert "Hunter2" not in msg


def test_empty_password_in_url_is_refused():
    msg = refused(["imaps://alice:@mail.example.org/", MNT])
    assert "password" in msg
    assert "IMAPFS_PASSWORD" in msg


def test_password_refusal_says_what_to_use_instead():
    msg = refused([f"imaps://alice:{PASSWORD}@mail.example.org/", MNT])
    assert "IMAPFS_PASSWORD" in msg
    assert "password_file" in msg and "password_command" in msg


# ---------------------------------------------------------- positionals, flags

def test_defaults():
    cfg = args()
    assert cfg == Config(scheme="imaps", user="alice", host="mail.example.org", port=993,
                         mountpoint=MNT, source=SRC, tls="implicit")
    assert cfg.foreground is cfg.debug is cfg.read_only is cfg.noparts is False
    assert cfg.allow_other is cfg.allow_root is False
    assert cfg.cafile is cfg.password_file is cfg.password_command is cfg.logfile is None
    assert (cfg.timeout, cfg.poll, cfg.connections) == (30.0, 60.0, 4)  # poll: folders not in use
    assert cfg.mem_cache == 64 << 20
    assert cfg.max_message == 256 << 20
    assert cfg.fuse_options == set()


def test_imap_defaults_to_starttls():
    assert args(source="imap://alice@mail.example.org/").tls == "starttls"


@pytest.mark.parametrize("argv, fg, dbg", [
    ([SRC, MNT], False, False),
    ([SRC, MNT, "-f"], True, False),
    ([SRC, MNT, "-d"], True, True),  # -d implies -f, as in libfuse and sshfs
    (["-f", "-d", SRC, MNT], True, True),
    ([SRC, "-f", MNT, "-d"], True, True),
    ([SRC, MNT, "-o", "foreground"], True, False),
    ([SRC, MNT, "-o", "debug"], True, True),
    ([SRC, MNT, "-s", "-n", "-v"], False, False),  # mount helper flags, ignored
], ids=range(8))
def test_flags(argv, fg, dbg):
    cfg = parse_args(argv)
    assert (cfg.foreground, cfg.debug) == (fg, dbg)
    assert (cfg.source, cfg.mountpoint) == (SRC, MNT)


@pytest.mark.parametrize("argv", [
    ["-h"],
    ["--help"],
    [SRC, MNT, "-h"],
    [SRC, "--help", MNT],
    ["-h", "-o", "bogus"],  # help wins over anything else
    [SRC, MNT, "-o", "ro", "-h"],
], ids=range(6))
def test_help(argv):
    with pytest.raises(HelpRequested):
        parse_args(argv)


@pytest.mark.parametrize("argv", [["-V"], ["--version"], [SRC, MNT, "-V"], ["-V", "-o", "bogus"]], ids=range(4))
def test_version(argv):
    with pytest.raises(VersionRequested):
        parse_args(argv)


def test_usage_mentions_both_schemes():
    assert "imaps://" in USAGE and "imap://" in USAGE and USAGE.startswith("usage:")


@pytest.mark.parametrize("argv", [
    [],
    [SRC],
    [SRC, MNT, "/extra"],
    ["-f", SRC],
    [SRC, "-o", "ro"],
], ids=range(5))
def test_wrong_number_of_positionals(argv):
    msg = refused(argv)
    assert "SOURCE and MOUNTPOINT" in msg


@pytest.mark.parametrize("flag", ["-x", "--foreground", "-fd", "--", "-O"])
def test_unknown_flag(flag):
    assert repr(flag) in refused([SRC, MNT, flag])


def test_dash_alone_is_a_positional():
    assert parse_args([SRC, "-"]).mountpoint == "-"


def test_dash_o_without_argument():
    assert "-o needs an argument" in refused([SRC, MNT, "-o"])


# ------------------------------------------------------------ option syntax

@pytest.mark.parametrize("opts", [
    ["-o", "ro", "-o", "noparts", "-o", "poll=60"],
    ["-o", "ro,noparts,poll=60"],
    ["-oro,noparts", "-opoll=60"],
    ["-o", "ro,,noparts,", "-o", ",poll=60"],
    ["-o", "poll=5", "-o", "ro,noparts,poll=60"],  # last one wins
    ["-o", "poll=60,noparts", "-oro"],
], ids=range(6))
def test_options_repeated_comma_separated_and_glued(opts):
    cfg = args(*opts)
    assert cfg.read_only and cfg.noparts and cfg.poll == 60.0


def test_options_may_come_before_positionals():
    cfg = parse_args(["-o", "ro", SRC, "-oconnections=2", MNT])
    assert cfg.read_only and cfg.connections == 2 and cfg.mountpoint == MNT


@pytest.mark.parametrize("group, expected", [
    (r"password_command=pass show mail\,imap", "pass show mail,imap"),
    (r"password_command=a\,b\,c,ro", "a,b,c"),
    (r"password_command=printf %s\\n x", r"printf %s\n x"),  # \\ is a backslash
    (r"password_command=echo \x", "echo x"),  # backslash quotes any character
    ("password_command=trailing\\", "trailing\\"),  # a lone final backslash stays
    ("password_command=gpg -d f.gpg | head -1", "gpg -d f.gpg | head -1"),
    ("password_command=a=b", "a=b"),  # only the first '=' splits
], ids=range(7))
def test_backslash_escaped_comma(group, expected):
    assert args("-o", group).password_command == expected


# ------------------------------------------------------------ each option

@pytest.mark.parametrize("source, value, tls", [
    ("imap://alice@h/", "off", "off"),
    ("imap://alice@h/", "no", "off"),
    ("imap://alice@h/", "false", "off"),
    ("imap://alice@h/", "0", "off"),
    ("imap://alice@h/", "OFF", "off"),
    ("imap://alice@h/", "on", "starttls"),
    ("imap://alice@h/", "yes", "starttls"),
    ("imap://alice@h/", "true", "starttls"),
    ("imap://alice@h/", "1", "starttls"),
    ("imaps://alice@h/", "on", "implicit"),
    ("imaps://alice@h/", "On", "implicit"),
], ids=lambda v: v)
def test_tls(source, value, tls):
    assert args("-o", f"tls={value}", source=source).tls == tls


def test_tls_off_then_on_on_imap():
    assert args("-o", "tls=off,tls=on", source="imap://alice@h/").tls == "starttls"


@pytest.mark.parametrize("opts", [["-o", "tls=off"], ["-o", "tls=on,tls=off"], ["-otls=no"]],
                         ids=range(3))
def test_tls_off_with_imaps_is_refused(opts):
    msg = refused([SRC, MNT, *opts])
    assert "tls=off" in msg and "imap://" in msg


@pytest.mark.parametrize("value", ["maybe", "", "starttls", "implicit"])
def test_tls_bad_value(value):
    assert "tls=" in refused([SRC, MNT, "-o", f"tls={value}"])


@pytest.mark.parametrize("opt, attr, value", [
    ("cafile=/etc/ssl/my ca.pem", "cafile", "/etc/ssl/my ca.pem"),
    ("password_file=/root/.imap-pass", "password_file", "/root/.imap-pass"),
    ("password_file=~/pw", "password_file", "~/pw"),  # no expansion here
    ("password_command=secret-tool lookup imap alice", "password_command",
     "secret-tool lookup imap alice"),
    ("logfile=/var/log/imapfs.log", "logfile", "/var/log/imapfs.log"),
    ("cafile=", "cafile", ""),
    ("timeout=1", "timeout", 1.0),
    ("timeout=3600", "timeout", 3600.0),
    ("timeout=2.5", "timeout", 2.5),
    ("poll=0", "poll", 0.0),
    ("poll=86400", "poll", 86400.0),
    ("poll=0.5", "poll", 0.5),
    ("connections=1", "connections", 1),
    ("connections=32", "connections", 32),
    ("connections=8", "connections", 8),
    ("backoff_max=1", "backoff_max", 1.0),
    ("backoff_max=3600", "backoff_max", 3600.0),
    ("mem_cache=512M", "mem_cache", 512 << 20),
    ("memory_cache=2G", "mem_cache", 2 << 30),
    ("mem_cache=0", "mem_cache", 0),
    ("max_message=10M", "max_message", 10 << 20),
    ("max_message=1G", "max_message", 1 << 30),
    ("ro", "read_only", True),
    ("noparts", "noparts", True),
    ("allow_other", "allow_other", True),
    ("allow_root", "allow_root", True),
    ("debug", "debug", True),
    ("foreground", "foreground", True),
    ("auto_unmount", "auto_unmount", True),
    ("uid=1000", "uid", 1000),
    ("gid=0", "gid", 0),
    ("umask=022", "umask", 0o022),
    ("umask=0", "umask", 0),
    ("umask=0o27", "umask", 0o027),
    ("file_mode=0644", "file_mode", 0o644),
    ("dir_mode=755", "dir_mode", 0o755),
    ("auth=xoauth2", "auth", "xoauth2"),
    ("auth=OAUTHBEARER", "auth", "oauthbearer"),
    ("auth=plain", "auth", "plain"),
    ("auth=login", "auth", "login"),
    ("auth=auto", "auth", "auto"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_option_values(opt, attr, value):
    cfg = args("-o", opt)
    got = getattr(cfg, attr)
    assert got == value and type(got) is type(value)


def test_connections_is_an_int():
    assert type(args("-o", "connections=4").connections) is int


@pytest.mark.parametrize("opt", ["default_permissions", "reconnect"])
def test_accepted_flag_without_effect(opt):
    assert args("-o", opt) == args()


@pytest.mark.parametrize("opt, needle", [
    ("timeout=0", "out of range"),
    ("timeout=0.5", "out of range"),
    ("timeout=3601", "out of range"),
    ("timeout=-1", "out of range"),
    ("timeout=nan", "out of range"),
    ("timeout=inf", "out of range"),
    ("timeout=", "needs a number"),
    ("timeout=30s", "needs a number"),
    ("poll=-1", "out of range"),
    ("poll=86401", "out of range"),
    ("poll=often", "needs a number"),
    ("connections=0", "out of range"),
    ("connections=33", "out of range"),
    ("connections=many", "needs a number"),
    ("backoff_max=0", "out of range"),
    ("backoff_max=3601", "out of range"),
    ("mem_cache=lots", "bad size"),
    ("mem_cache=", "bad size"),
    ("mem_cache=-1M", "bad size"),
    ("mem_cache=1.5G", "bad size"),
    ("mem_cache=1T", "bad size"),
    ("auth=cram-md5", "auth= takes auto, plain, login, xoauth2, oauthbearer"),
    ("uid=alice", "numeric id"),
    ("uid=-1", "numeric id"),
    ("gid=", "numeric id"),
    ("umask=8", "octal mode"),
    ("umask=1777", "octal mode"),
    ("file_mode=rw", "octal mode"),
    ("dir_mode=", "octal mode"),
    ("auth=", "auth= takes"),
    ("max_message=big", "bad size"),
    ("max_message=512", "too small"),
], ids=lambda v: v)
def test_option_value_refused(opt, needle):
    msg = refused([SRC, MNT, "-o", opt])
    assert needle in msg
    assert opt.split("=")[0] in msg or needle == "bad size"


@pytest.mark.parametrize("opt", ["ro=1", "noparts=yes", "allow_other=", "allow_root=0",
                                 "debug=1", "foreground=1", "default_permissions=1"])
def test_flag_option_with_a_value_is_refused(opt):
    msg = refused([SRC, MNT, "-o", opt])
    assert opt.split("=")[0] in msg and "no value" in msg


@pytest.mark.parametrize("opts", [
    ["-o", "password_file=/p,password_command=pass x"],
    ["-o", "password_command=pass x", "-o", "password_file=/p"],
], ids=range(2))
def test_both_password_sources_refused(opts):
    msg = refused([SRC, MNT, *opts])
    assert "password_file" in msg and "password_command" in msg


@pytest.mark.parametrize("opt", ["password=hunter2", "password=", "password", " password=x"])
def test_password_option_refused(opt):
    msg = refused([SRC, MNT, "-o", opt])
    assert "IMAPFS_PASSWORD" in msg
    assert "hunter2" not in msg


@pytest.mark.parametrize("opts, expected", [
    (["-o", "fsname=imap-alice"], {"fsname=imap-alice"}),
    (["-o", "subtype=imapfs"], {"subtype=imapfs"}),
    (["-o", "fsname=a,subtype=b"], {"fsname=a", "subtype=b"}),
    (["-o", r"fsname=a\,b"], {"fsname=a,b"}),
], ids=range(4))
def test_fuse_options(opts, expected):
    assert args(*opts).fuse_options == expected


GENERIC = ["rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
           "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "auto", "noauto",
           "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "defaults",
           "sync", "async", "dirsync", "lazytime", "nolazytime", "silent", "loud", "iversion",
           "noiversion", "mand", "nomand",
           "x-systemd.automount", "x-systemd.idle-timeout=60", "x-systemd.requires=network-online.target",
           "x-gvfs-show", "comment=systemd.automount", "context=system_u:object_r:fusefs_t:s0",
           "fscontext=x", "defcontext=x", "rootcontext=x"]


@pytest.mark.parametrize("opt", GENERIC)
def test_generic_mount_options_are_ignored(opt):
    assert args("-o", opt) == args()


def test_fstab_style_option_string():
    cfg = args("-o", "rw,nosuid,nodev,_netdev,noauto,x-systemd.automount,defaults,user,"
                     "password_file=/etc/imapfs/alice,allow_other,ro")
    assert cfg.password_file == "/etc/imapfs/alice"
    assert cfg.allow_other and cfg.read_only
    assert cfg.fuse_options == set()


@pytest.mark.parametrize("opt, name", [
    ("bogus", "bogus"),
    ("bogus=1", "bogus"),
    ("Ro", "Ro"),  # option names are case-sensitive
    ("PASSWORD=x", "PASSWORD"),
    ("user_name=alice", "user_name"),
    ("port=993", "port"),
    ("tls", "tls"),  # a value option without '='
    ("cafile", "cafile"),
    ("timeout", "timeout"),
    ("x_systemd.automount", "x_systemd.automount"),
], ids=lambda v: v)
def test_unknown_option_names_itself(opt, name):
    msg = refused([SRC, MNT, "-o", opt])
    assert repr(name) in msg


@pytest.mark.parametrize("opt", ["passwd=hunter2", "pass=hunter2", "PASSWORD=hunter2", "pw=hunter2"])
def test_unknown_option_does_not_echo_its_value(opt):
    assert "hunter2" not in refused([SRC, MNT, "-o", opt])


# ------------------------------------------------------------ sizes

@pytest.mark.parametrize("text, size", [
    ("0", 0),
    ("1", 1),
    ("4096", 4096),
    ("100k", 100 << 10),
    ("100K", 100 << 10),
    ("512m", 512 << 20),
    ("512M", 512 << 20),
    ("2G", 2 << 30),
    ("2g", 2 << 30),
    ("512MB", 512 << 20),
    ("512MiB", 512 << 20),
    ("100KiB", 100 << 10),
    ("64kb", 64 << 10),
    (" 2G ", 2 << 30),
    ("16384G", 16384 << 30),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", " ", "M", "G2", "2 G", "1.5G", "-1", "+1", "1T", "1P",
                                  "2GG", "0x10", "1e3", "ten", "512Mx", "512MBs", "½G"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError) as ei:
        parse_size(text)
    assert "bad size" in str(ei.value)


# ------------------------------------------------------------ ownership and modes

@pytest.mark.parametrize("opts, modes", [
    ([], (0o600, 0o700)),  # private by default (issue 13)
    (["-o", "umask=022"], (0o644, 0o755)),
    (["-o", "umask=027"], (0o640, 0o750)),
    (["-o", "umask=0"], (0o666, 0o777)),
    (["-o", "file_mode=0640"], (0o640, 0o700)),
    (["-o", "file_mode=0444,dir_mode=0555,umask=0"], (0o444, 0o555)),  # explicit modes win over umask
    (["-o", "umask=0,dir_mode=0750"], (0o666, 0o750)),
], ids=range(7))
def test_modes(opts, modes):
    assert args(*opts).modes == modes


def test_owner_defaults_to_the_mounting_user():
    cfg = args()
    assert (cfg.uid, cfg.gid) == (None, None)  # resolved to os.getuid()/getgid() by fs.Operations


# ------------------------------------------------------------ help, usage.md and the man page agree

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _names(syntaxes: list[str]) -> set[str]:
    """``tls=on|off`` → ``tls``; ``-V, --version`` → ``-V``, ``--version``."""
    out = set()
    for syn in syntaxes:
        for part in re.split(r",\s+", syn):
            part = part.strip().strip("`")
            if part:
                out.add(re.split(r"[= \[]", part, maxsplit=1)[0])
    return out


def _help_names() -> tuple[set[str], set[str]]:
    flags, opts, section = [], [], None
    for line in USAGE.splitlines():
        if line.startswith(("Flags:", "Options (-o):")):
            section = line
            continue
        if not line.startswith("  ") or not section:
            section = None if not line.strip() else section
            continue
        m = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)
        if m and m.group(1) != "OPTION":
            (flags if section.startswith("Flags") else opts).append(m.group(1))
    return _names(flags), _names(opts)


def _usage_md_names() -> tuple[set[str], set[str]]:
    text = (DOCS / "usage.md").read_text()

    def first_cells(heading: str) -> list[str]:
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        cells = [row.split("|")[1] for row in body.splitlines() if row.startswith("| `")]
        return [tok for cell in cells for tok in re.findall(r"`([^`]+)`", cell)]

    return _names(first_cells("\n## Flags\n")), _names(first_cells("\n## Options (`-o`)\n"))


def _man_names() -> tuple[set[str], set[str]]:
    text = (DOCS / "imapfs.1").read_text()

    def tagged(section: str) -> list[str]:
        body = text.split(f"\n.SH {section}\n", 1)[1].split("\n.SH ", 1)[0]
        lines = body.splitlines()
        tags = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == ".TP"]
        return [re.sub(r"\\f[BIRP]|^\.(?:BI|BR|IR|B|I)\s+|\"", "", t).replace("\\-", "-") for t in tags]

    return _names(tagged("OPTIONS")), _names(tagged("MOUNT OPTIONS"))


def test_option_lists_agree():
    """Every flag and option in --help is in docs/usage.md and docs/imapfs.1, and the other way round."""
    help_flags, help_opts = _help_names()
    md_flags, md_opts = _usage_md_names()
    man_flags, man_opts = _man_names()
    assert {"tls", "auth", "uid", "umask", "file_mode", "auto_unmount", "reconnect", "subtype"} <= help_opts
    assert {"-f", "-d", "-V", "--version", "-o", "-h"} <= help_flags
    assert md_opts - {"memory_cache"} == help_opts, "docs/usage.md vs --help"
    assert man_opts - {"memory_cache"} == help_opts, "docs/imapfs.1 vs --help"
    assert md_flags == help_flags, "docs/usage.md vs --help"
    assert man_flags == help_flags, "docs/imapfs.1 vs --help"


def test_help_gives_every_option_a_default():
    rows = [line for line in USAGE.split("Options (-o):", 1)[1].split("\n\n", 1)[0].splitlines()
            if re.match(r"  \S", line) and line.split()[0] != "OPTION"]
    assert len(rows) == len(_help_names()[1]) > 30
    for row in rows:
        assert re.match(r"  \S+\s+\S", row) and len(row.split()) >= 3, row
