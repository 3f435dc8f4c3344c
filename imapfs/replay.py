"""Replay's I/O half: one journal entry sent to the server, every precondition checked first.

imapfs.offline decides *what* to replay and in which order, shows what is owed
and settles the tree afterwards; this module only talks to the server about
one entry at a time, with the same no-loss rules as online writes
(Connection.move_message / expunge_message): a move or delete checks the
message is still there under the same UIDVALIDITY, an APPEND marked as
started is looked up by Message-ID and bytes before it is sent again, and a
new message whose folder is gone goes to ``imapfs-recovered``, never away.
"""

from __future__ import annotations

import imaplib
import logging
import os
import re
import tempfile

import trio

from .connection import Connection
from .disk import Disk
from .errors import CommandFailed, Exists, ImapfsError, NotFound, Unsupported
from .model import RECOVERED, check_date, check_flags
from .store import JournalEntry
from .tree import Tree

log = logging.getLogger(__name__)

_MSGID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.I | re.M)
_SEARCHABLE_ID = re.compile(rb"<[\x21-\x7e]{1,900}>")  # printable ASCII: it can be quoted in UID SEARCH
MSGID_WINDOW = 1024 * 1024  # the header is looked for in the first MiB only


class Skip(Exception):
    """This journal entry no longer applies; the reason goes to the log and the state xattr."""


def message_id(data: bytes) -> str | None:
    """The Message-ID to look a possibly-sent APPEND up by; None if there is none that
    could be sent in a search (NUL, 8-bit, absurdly long): such a message may then be
    stored twice, never lost."""
    head = data[:MSGID_WINDOW].split(b"\r\n\r\n", 1)[0]
    m = _MSGID.search(head)
    if not m or not _SEARCHABLE_ID.fullmatch(m.group(1)):
        return None
    return m.group(1).decode("ascii")


def describe(err: BaseException) -> str:
    """An error for the log and the journal: our own say what happened, others also what they are."""
    return str(err) if isinstance(err, ImapfsError) else f"{type(err).__name__}: {err}"


class Sender:
    """Sends journal entries to the server, one at a time (the Journal's replay calls it)."""

    def __init__(self, tree: Tree, disk: Disk) -> None:
        self.tree = tree
        self.disk = disk
        self.store = disk.store
        # (folder, UIDVALIDITY, UID) the entry being sent stored, if it was an APPEND
        self.appended: tuple[bytes, int, int] | None = None

    async def take_back(self, e: JournalEntry) -> None:
        stored = self.appended
        if e.op != "append" or stored is None:
            log.info("offline change #%d was superseded by a newer version of its file", e.seq)
            return
        box, uidv, uid = stored

        def expunge(c: Connection) -> None:
            info = c.select(box)
            if info.uidvalidity == uidv and c.uid_exists(box, uidv, uid):
                c.expunge_message(box, uidv, uid)

        try:
            with trio.CancelScope(shield=True):
                await self.tree.pool.run(expunge, retry=False)
            log.info("offline change #%d was superseded while it was sent: its copy (UID %d) is removed again",
                     e.seq, uid)
        except ImapfsError as err:
            log.warning("offline change #%d was superseded while it was sent; an older version of the file "
                        "stays in %s as UID %d: %s", e.seq, box.decode("ascii", "replace"), uid, err)

    def save_unsent(self, e: JournalEntry) -> str:
        data = e.read_blob() or b""
        folder = self.tree.unsent_dir
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"unsent-{e.seq}-", suffix=".eml", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    async def apply(self, e: JournalEntry) -> str:
        a = e.args
        pool = self.tree.pool
        if e.op == "move":
            src, uidv, uid, dest = a["src"], a["uidvalidity"], a["uid"], a["dest"]

            def move(c: Connection) -> str:
                self.check_message(c, src, uidv, uid)
                try:
                    where, moved = c.move_message(src, uidv, uid, dest)
                except (NotFound, CommandFailed) as err:
                    raise Skip(f"cannot move to {dest.decode('ascii', 'replace')} ({err}); "
                               "the message stays where it was") from None
                except Unsupported as err:
                    raise Skip(str(err)) from None
                if not moved:
                    raise Skip("the message was removed by someone else")
                return f"moved to {dest.decode('ascii', 'replace')}" + (f" as UID {where[1]}" if where else "")

            return await pool.run(move, folder=src, retry=False)
        if e.op == "delete":
            folder, uidv, uid, trash = a["folder"], a["uidvalidity"], a["uid"], a.get("trash")

            def delete(c: Connection) -> str:
                self.check_message(c, folder, uidv, uid)
                try:
                    if trash is not None and trash != folder:
                        c.move_message(folder, uidv, uid, trash)
                        return "moved to the trash"
                    c.expunge_message(folder, uidv, uid)
                except Unsupported as err:
                    raise Skip(str(err)) from None
                return "deleted"

            return await pool.run(delete, folder=folder, retry=False)
        if e.op == "flags":
            folder, uidv, uid, flags = a["folder"], a["uidvalidity"], a["uid"], a["flags"]
            check_flags(flags)  # a value imaplib cannot send: this entry's failure, before any command

            def setflags(c: Connection) -> str:
                self.check_message(c, folder, uidv, uid)
                c.uid_store(folder, uidv, uid, "FLAGS.SILENT", flags)
                return "flags set"

            return await pool.run(setflags, folder=folder, retry=False)
        if e.op == "mkdir":
            name = a["name"]

            def mkdir(c: Connection) -> str:
                try:
                    c.create(name)
                except Exists:
                    return "already existed"
                try:
                    c.subscribe(name)
                except CommandFailed:
                    pass
                return "created"

            return await pool.run(mkdir, retry=False)
        if e.op == "append":
            return await self.apply_append(e)
        raise Skip(f"unknown change {e.op!r}")

    @staticmethod
    def check_message(c: Connection, folder: bytes, uidvalidity: int, uid: int) -> None:
        try:
            info = c.select(folder)
        except NotFound:
            raise Skip(f"folder {folder.decode('ascii', 'replace')} is gone") from None
        if info.uidvalidity != uidvalidity:
            raise Skip(f"UIDVALIDITY of {folder.decode('ascii', 'replace')} changed; "
                       f"UID {uid} no longer names the same message")
        if not c.uid_exists(folder, uidvalidity, uid):
            raise Skip("the message was removed by someone else")

    async def apply_append(self, e: JournalEntry) -> str:
        a = e.args
        data = await trio.to_thread.run_sync(e.read_blob)  # read and hashed off the loop
        if data is None:
            raise Skip("no message bytes recorded")
        folder, flags, date, replaces = a["folder"], a.get("flags") or [], a.get("date"), a.get("replaces")
        earlier = a.get("superseded") or []
        check_flags(flags)  # values imaplib cannot send: this entry's failure, not the replay's
        check_date(date)
        mid = message_id(data)
        pool = self.tree.pool
        if e.started is not None and mid is not None:
            # A run that crashed (or a connection that died) after sending it may have
            # stored it already. The Message-ID only finds candidates: an edit's old
            # version has the same one, so only the same bytes count as "stored".

            def look(c: Connection) -> bool:
                # What APPEND would have stored (imaplib's own line-end pattern, not in typeshed).
                wanted = imaplib.MapCRLF.sub(b"\r\n", data)  # type: ignore[attr-defined]
                for box in (folder, RECOVERED):
                    try:
                        for uid in c.search_header(box, "Message-ID", mid):
                            it = c.fetch_items(box, None, uid, "(UID BODY.PEEK[])")
                            if it.get(b"BODY[]") == wanted:
                                return True
                    except (NotFound, CommandFailed):
                        pass
                return False

            if await pool.run(look, touches=folder, retry=False):
                return f"already on the server (found by Message-ID {mid}, same bytes)"
        await self.disk.call(self.store.journal_started, e.seq)

        def append(c: Connection) -> str:
            box, where = c.append_or_recover(folder, data, flags, date, RECOVERED)
            if box != folder:
                outcome = f"folder {folder.decode('ascii', 'replace')} is gone: stored in {RECOVERED.decode()}"
                log.warning("offline change #%d: %s", e.seq, outcome)
                return outcome
            outcome = f"stored in {folder.decode('ascii', 'replace')}"
            if replaces:
                uidv, uid = replaces
                try:
                    info = c.select(folder)
                    if info.uidvalidity == uidv and c.uid_exists(folder, uidv, uid):
                        c.expunge_message(folder, uidv, uid)
                except ImapfsError as err:
                    log.warning("offline edit #%d stored, but the old version stays: %s", e.seq, err)
            for box, uidv, uid in earlier:  # our copies of earlier versions of the same file
                try:
                    info = c.select(box)
                    if info.uidvalidity == uidv and c.uid_exists(box, uidv, uid):
                        c.expunge_message(box, uidv, uid)
                except ImapfsError as err:
                    log.warning("offline change #%d stored, but a copy of an earlier version stays: %s",
                                e.seq, err)
            if where:
                self.appended = (folder, where[0], where[1])
            return outcome + (f" as UID {where[1]}" if where else "")

        return await pool.run(append, touches=folder, retry=False)
