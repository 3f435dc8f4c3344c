"""Commands that read: LIST, STATUS, UID SEARCH, UID FETCH, and the folder sync.

One unusable FETCH response costs that message only (``UNPARSED``); a
message another connection just stored is asked for again after a fresh
SELECT, because a selected mailbox can lag behind (``fetch_uids``).
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
from collections.abc import Sequence
from typing import Any

from .. import imapproto
from ..errors import NotFound, ProtocolError, StaleError
from ..records import Known, RawMeta, Status, SyncResult
from .base import ConnectionBase
from .wire import Reply, flag_str, parse_status

log = logging.getLogger(__name__)

META_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
_PASSING_ITEMS = {b"UID", b"FLAGS", b"MODSEQ"}  # what an unsolicited FETCH in passing carries
UNPARSED = b"\0UNPARSED"  # uid_fetch item: this message's FETCH response could not be parsed (why)
# Metadata of a large folder is fetched this many UIDs at a time: one answer's raw lines and
# parsed items are alive at once, so a whole 100,000-message folder in one FETCH peaked at
# 330 MB and left the allocator holding most of it (issue 12, memory per message).
META_BATCH = 5000


class Reads(ConnectionBase):
    """The read commands of a connection; none changes the mailbox."""

    def list_folders(self) -> list[imapproto.ListEntry]:
        typ, dat = self._cmd("LIST", lambda i: i.list('""', "*"))
        self._check("LIST", typ, dat)
        return imapproto.parse_list(d for d in dat if d is not None)

    # -- fetching ---------------------------------------------------------

    def uid_fetch(self, uidset: str, items: str) -> list[tuple[int, dict[bytes, Any]]]:
        """``UID FETCH`` on the selected folder; returns (uid, items) pairs for responses with a UID.

        A response that cannot be parsed costs that message only: it is logged
        and, when its UID can still be read, returned as ``{UID: uid,
        UNPARSED: reason}`` (so a UID list still counts it as present); the
        others are returned as usual.
        """
        typ, dat = self._cmd(f"UID FETCH {items}", lambda i: i.uid("FETCH", uidset, items))
        if typ != "OK":
            self._check(f"UID FETCH {uidset} {items}", typ, dat)
        out = []
        bad: list[imapproto.FetchFailure] = []
        for seq, it in imapproto.parse_fetch((d for d in dat if d is not None), bad):
            uid = it.get(b"UID")
            if isinstance(uid, int):
                if 0 < uid <= imapproto.MAX_UID:
                    out.append((uid, it))
                else:
                    bad.append(imapproto.FetchFailure(seq, None, f"UID {uid} out of range"))
        for f in bad:
            log.warning("folder %r: unusable FETCH reply for %s: %s", self.selected,
                        f"UID {f.uid}" if f.uid is not None else f"message {f.seq}", f.error)
            if f.uid is not None:
                out.append((f.uid, {b"UID": f.uid, UNPARSED: f.error}))
        return out

    def fetch_uids(self, name: bytes, uidvalidity: int | None, uids: Sequence[int],
                   items: str) -> list[tuple[int, dict[bytes, Any]]]:
        """UID FETCH of these messages of *name*; one the answer leaves out is asked for
        again after a fresh SELECT (same UIDVALIDITY), because a mailbox selected on
        this connection can lag behind what another client just added (seen in CI).
        Only then is a message taken to be gone."""
        self.ensure_selected(name, uidvalidity)
        got = self.uid_fetch(imapproto.format_uid_set(uids), items)
        answered = {u for u, it in got if it.keys() - _PASSING_ITEMS}
        missing = [u for u in uids if u not in answered]
        if missing:
            info = self.select(name)
            if uidvalidity is not None and info.uidvalidity != uidvalidity:
                raise StaleError(f"UIDVALIDITY of {name.decode('ascii', 'replace')} changed")
            late = self.uid_fetch(imapproto.format_uid_set(missing), items)
            if any(it.keys() - _PASSING_ITEMS for _u, it in late):
                log.info("%s: UIDs %s answered only after a fresh SELECT",
                         name.decode("ascii", "replace"), imapproto.format_uid_set(missing))
            got += late
        unusable = {u: it[UNPARSED] for u, it in got if UNPARSED in it}
        if unusable:
            if uids and uids[0] in unusable and not any(u == uids[0] and UNPARSED not in it for u, it in got):
                # The message a reader waits for (the rest are read-ahead): its error, EIO.
                raise ProtocolError(f"{name.decode('ascii', 'replace')} UID {uids[0]}: "
                                    f"unusable reply: {unusable[uids[0]]}")
            got = [(u, it) for u, it in got if UNPARSED not in it]
        return got

    def uid_set(self) -> set[int]:
        """Every UID of the selected folder, by ``UID SEARCH`` (ESEARCH ranges where offered).

        This is the ground truth a sync compares against: counters (UIDNEXT,
        MESSAGES, HIGHESTMODSEQ) only say *whether* to look, never *what* is there.
        """
        if "ESEARCH" in self.capabilities:
            def do(i: imaplib.IMAP4) -> Reply:
                i.untagged_responses.pop("ESEARCH", None)
                typ, dat = i._simple_command("UID", "SEARCH", "RETURN", "(ALL)", "ALL")
                return typ, [dat, i.untagged_responses.pop("ESEARCH", [])]

            typ, (dat, lines) = self._cmd("UID SEARCH RETURN (ALL)", do)
            if typ != "OK":
                self._check("UID SEARCH", typ, dat)
            out: set[int] = set()
            for line in lines:
                if not isinstance(line, bytes):
                    continue
                words = line.split()
                for k, w in enumerate(words[:-1]):
                    if w.upper() == b"ALL":
                        # The folder's own EXISTS sets the bound (the default cap is for
                        # sets a reply names in passing), within a hard 4 million.
                        exists = self.select_info.exists if self.select_info else 0
                        limit = min(max(imapproto.MAX_UID_SET, exists + 1024), 4_000_000)
                        out.update(imapproto.parse_uid_set(words[k + 1], limit))
            return out
        typ, dat = self._cmd("UID SEARCH ALL", lambda i: i.uid("SEARCH", "ALL"))
        if typ != "OK":
            self._check("UID SEARCH", typ, dat)
        found: set[int] = set()
        for d in dat:
            if isinstance(d, bytes):
                for x in d.split():
                    if not x.isdigit():
                        raise ProtocolError(f"bad SEARCH reply {d[:80]!r}")
                    found.add(int(x))
        return found

    def sync(self, name: bytes, known: Known | None, verify: bool = False) -> SyncResult:
        """Bring the caller's view of folder *name* up to date in one thread hop.

        Counters decide *whether* to look (one SELECT when nothing moved); what
        is there is decided by comparing UID sets: whenever UIDNEXT or EXISTS
        differ from what the caller knows, or *verify* asks for it, the
        folder's whole UID set is fetched (ESEARCH answers in ranges) and the
        metadata of every UID the caller lacks. So a missed push event, a lost
        APPENDUID or a stale local cache is repaired, never kept forever
        (GUIDE §5, issue 10). Flags come from QRESYNC/CONDSTORE's CHANGEDSINCE,
        and on *verify* from a full FLAGS fetch (a counter alone never decides).
        """
        since = (known.uidvalidity, known.highestmodseq) if known is not None and known.highestmodseq else None
        use_qresync = since is not None and self.qresync
        info = self.select(name, since if use_qresync else None)
        if known is None or known.uidvalidity != info.uidvalidity:
            if info.exists > META_BATCH:
                present = self.uid_set()
                added = self.fetch_meta_batched(present)
            else:
                added = self.fetch_meta("1:*") if info.exists else []
                present = {m.uid for m in added}
                if info.exists != len(added):  # some metadata was unusable, or the folder moved meanwhile
                    present = self.uid_set()
            return SyncResult(info, True, added, present)
        res = SyncResult(info, False, [])
        if use_qresync:
            res.removed = set(self.vanished)
            res.flags = dict(self.flag_changes)
            if self.vanished_unreadable:
                verify = True
        if verify or info.uidnext is None or info.uidnext != known.uidnext or info.exists != known.count:
            present = self.uid_set() if info.exists else set()
            res.present = present
            new = present - known.uids
            if new:
                res.added = self.fetch_meta_batched(new)
        condstore = "CONDSTORE" in self.capabilities
        if verify and info.exists:
            # Every flag, compared, as the UID set is: a verify never trusts the
            # mod-sequence alone (a cache that lags its counter, a missed event, an
            # offline change not applied). One line per message, no headers.
            res.flags.update(self._flags("(UID FLAGS)"))
        elif (not use_qresync and condstore and known.highestmodseq and info.highestmodseq
                and info.highestmodseq != known.highestmodseq and info.exists):
            res.flags.update(self._flags(f"(UID FLAGS) (CHANGEDSINCE {known.highestmodseq})"))
        return res

    def _flags(self, items: str) -> dict[int, tuple[str, ...]]:
        """UID → flags of the selected folder's messages that ``UID FETCH 1:* items`` reports."""
        out: dict[int, tuple[str, ...]] = {}
        for uid, it in self.uid_fetch("1:*", items):
            fl = it.get(b"FLAGS")
            if isinstance(fl, list):
                out[uid] = tuple(flag_str(f) for f in fl if f is not None)
        return out

    def status(self, name: bytes) -> Status:
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if "CONDSTORE" in self.capabilities else "")

        def do(i: imaplib.IMAP4) -> Reply:
            i.untagged_responses.pop("STATUS", None)
            typ, dat = i._simple_command("STATUS", imapproto.quote(name), f"({items})")
            return typ, [dat, i.untagged_responses.pop("STATUS", [])]

        typ, (dat, lines) = self._cmd("STATUS", do)
        self._check(f"STATUS {name!r}", typ, dat)
        for st_name, st in parse_status(lines):
            if st_name == name:
                return st
        raise ProtocolError(f"no STATUS reply for {name!r}")

    def list_status(self) -> tuple[list[imapproto.ListEntry], dict[bytes, Status]]:
        """LIST with STATUS of every folder in one command (RFC 5819), or plain LIST."""
        if "LIST-STATUS" not in self.capabilities:
            return self.list_folders(), {}
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if "CONDSTORE" in self.capabilities else "")

        def do(i: imaplib.IMAP4) -> Reply:
            for k in ("LIST", "STATUS"):
                i.untagged_responses.pop(k, None)
            special = " SPECIAL-USE" if "SPECIAL-USE" in self.capabilities else ""
            typ, dat = i._simple_command("LIST", '""', "*", "RETURN", f"(STATUS ({items}){special})")
            return typ, [dat, i.untagged_responses.pop("LIST", []), i.untagged_responses.pop("STATUS", [])]

        typ, (dat, lists, statuses) = self._cmd("LIST-STATUS", do)
        self._check("LIST RETURN (STATUS)", typ, dat)
        return imapproto.parse_list(d for d in lists if d is not None), dict(parse_status(statuses))

    def fetch_new_meta(self, name: bytes, uidvalidity: int, uid: int) -> list[RawMeta]:
        """Metadata of a message another connection just stored (APPENDUID, COPYUID).

        A connection that already has *name* selected may not see it yet (Dovecot
        shows a new message to a selected mailbox only once that session syncs), so
        if the answer leaves it out, select afresh and ask again.
        """
        self.ensure_selected(name, uidvalidity)
        metas = self.fetch_meta(str(uid))
        if any(m.uid == uid for m in metas):
            return metas
        info = self.select(name)
        if info.uidvalidity != uidvalidity:
            raise StaleError(f"UIDVALIDITY of {name.decode('ascii', 'replace')} changed")
        return self.fetch_meta(str(uid))

    def fetch_meta_batched(self, uids: set[int]) -> list[RawMeta]:
        """Metadata of *uids*, META_BATCH UIDs per FETCH (ranges where they are consecutive)."""
        ordered = sorted(uids)
        out: list[RawMeta] = []
        for i in range(0, len(ordered), META_BATCH):
            out += self.fetch_meta(imapproto.format_uid_set(ordered[i:i + META_BATCH]))
        return out

    def fetch_meta(self, uidset: str) -> list[RawMeta]:
        out: list[RawMeta] = []
        # Most messages of a folder share a few flag sets: one tuple of str each, made once
        # (CPU per message of a cold listing, issue 12; and memory, as Msg keeps it).
        flag_sets: dict[tuple[Any, ...], tuple[str, ...]] = {}
        for uid, it in self.uid_fetch(uidset, META_ITEMS):
            try:
                if UNPARSED in it:
                    raise ProtocolError(it[UNPARSED])
                size = it[b"RFC822.SIZE"]
                if isinstance(size, bytes) and size.isdigit():  # beyond number64: an atom
                    raise ProtocolError(f"RFC822.SIZE {size[:40].decode()} is over the limit of "
                                        f"{imapproto.MAX_MESSAGE_SIZE}")
                if not isinstance(size, int):
                    raise ProtocolError("RFC822.SIZE is not a number")
                if size > imapproto.MAX_MESSAGE_SIZE:
                    raise ProtocolError(f"RFC822.SIZE {size} is over the limit of {imapproto.MAX_MESSAGE_SIZE}")
                date = imapproto.parse_internaldate(it[b"INTERNALDATE"])
                flags = it.get(b"FLAGS") or []
                if not isinstance(flags, list):  # FLAGS 5 was a TypeError that failed the whole folder
                    raise ProtocolError("FLAGS is not a list")
                key = tuple(flags)
                try:
                    flag_t = flag_sets[key]
                except (KeyError, TypeError):  # new, or not hashable (a nested list)
                    flag_t = tuple(flag_str(f) for f in flags if f is not None)
                    if len(flag_sets) < 1000:
                        with contextlib.suppress(TypeError):
                            flag_sets[key] = flag_t
                subj = it.get(b"BODY[HEADER.FIELDS (SUBJECT)]")
                out.append(RawMeta(uid, size, date, flag_t, subj if isinstance(subj, bytes) else None))
            except (KeyError, ProtocolError) as e:
                # One bad message must not break its folder: skip it loudly.
                log.warning("folder %r: ignoring message UID %d with unusable metadata: %s",
                            self.selected, uid, e)
        return out

    def fetch_bodies(self, name: bytes, uidvalidity: int, uids: Sequence[int],
                     extra: str = "") -> dict[int, tuple[bytes, dict[bytes, Any]]]:
        """Whole ``BODY[]`` of several messages in one round trip, with *extra* items
        (e.g. BODYSTRUCTURE, so listing their ``.parts`` later costs no round trip)."""
        want = set(uids)
        out: dict[int, tuple[bytes, dict[bytes, Any]]] = {}
        items = f"(UID BODY.PEEK[]{' ' + extra if extra else ''})"
        for uid, it in self.fetch_uids(name, uidvalidity, uids, items):
            body = it.get(b"BODY[]")
            if uid in want and isinstance(body, bytes):
                out[uid] = (body, it)
        return out

    def fetch_range(self, name: bytes, uidvalidity: int, uid: int, offset: int, length: int) -> bytes:
        """``BODY.PEEK[]<offset.length>`` of one message."""
        for u, it in self.fetch_uids(name, uidvalidity, [uid], f"(UID BODY.PEEK[]<{offset}.{length}>)"):
            body = it.get(b"BODY[]")
            if u == uid and isinstance(body, bytes):
                return body
            if u == uid and body is None:
                return b""
        raise NotFound(f"message UID {uid} is gone from {name.decode('ascii', 'replace')}")

    def search_header(self, name: bytes, field: str, value: str) -> list[int]:
        """UIDs in *name* whose header *field* contains *value* (finds an APPEND that may have landed)."""
        self.ensure_selected(name)
        # imaplib sends a bytes argument as it is; typeshed allows str only.
        typ, dat = self._cmd("UID SEARCH", lambda i: i.uid("SEARCH", "HEADER", field,
                                                           imapproto.quote(value)))  # type: ignore[arg-type]
        if typ != "OK":
            self._check("UID SEARCH", typ, dat)
        out: list[int] = []
        for d in dat:
            if isinstance(d, bytes):
                out.extend(int(x) for x in d.split() if x.isdigit())
        return out

    def uid_exists(self, name: bytes, uidvalidity: int, uid: int) -> bool:
        self.ensure_selected(name, uidvalidity)
        return any(u == uid for u, _ in self.uid_fetch(str(uid), "(UID)"))

    def fetch_items(self, name: bytes, uidvalidity: int | None, uid: int, items: str) -> dict[bytes, Any]:
        """Arbitrary FETCH items of one message (FLAGS, BODYSTRUCTURE, ...)."""
        for u, it in self.fetch_uids(name, uidvalidity, [uid], items):
            if u == uid:
                return it
        raise NotFound(f"message UID {uid} is gone from {name.decode('ascii', 'replace')}")
