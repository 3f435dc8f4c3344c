"""Write-through: every change a user makes to stored mail and folders.

The server first, then the tree (invariant 2). While the server is away a
change goes to the offline journal instead (:meth:`Writes._send_or_journal`,
the one place that decides). The original of a move is removed only by the
server's MOVE or after a confirmed COPY; a delete is \\Deleted + UID EXPUNGE
of exactly that UID, never a plain EXPUNGE (docs/writes.md).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from . import codec
from .errors import (
    CommandFailed,
    Exists,
    FolderStalled,
    ImapfsError,
    InvalidArgument,
    NotEmpty,
    NotFound,
    Offline,
    ReadOnly,
    ServerUnavailable,
    Unsupported,
)
from .flagview import FlagView
from .model import RECOVERED, Folder, Msg, check_date, check_flags, sendable_flag, without_recent

if TYPE_CHECKING:  # the tree builds Writes with itself; offline is handed in at run time
    from .offline import Journal
    from .pending import PendingFile
    from .tree import Tree

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Recorded(enum.Enum):
    RECORDED = "recorded"


RECORDED = _Recorded.RECORDED  # what _send_or_journal returns when the journal took the change


class Writes:
    """Move, delete, flags, folders, and the server's part of storing a file."""

    def __init__(self, tree: Tree, *, read_only: bool = False, trash: str | None = None) -> None:
        self.tree = tree
        self.pool = tree.pool
        self.disk = tree.disk
        self.notes = tree.notes
        self.inodes = tree.inodes
        self.read_only = read_only
        self.trash = trash  # None, "auto" (the \\Trash folder) or a folder path with "/"
        self._msg_locks: dict[int, trio.Lock] = {}
        self.flag_view = FlagView(tree)  # getxattr user.imap.flags (issue 12)

    @property
    def caps(self) -> frozenset[str]:
        return self.pool.capabilities

    def writable(self) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")

    def _msg_lock(self, m: Msg) -> trio.Lock:
        lock = self._msg_locks.get(m.inode)
        if lock is None:
            lock = self._msg_locks[m.inode] = trio.Lock()
        return lock

    def trash_folder(self) -> Folder | None:
        if not self.trash:
            return None
        if self.trash == "auto":
            stack = [self.tree.root]
            while stack:
                f = stack.pop()
                if b"\\trash" in f.special and f.selectable:
                    return f
                stack.extend(f.children.values())
            return None
        node = self.tree.root
        for comp in self.trash.strip("/").split("/"):
            child = node.children.get(comp)
            if child is None:
                return None
            node = child
        return node if node.selectable else None

    async def new_msg(self, folder: Folder, where: tuple[int, int] | None) -> Msg | None:
        """Add the message the server just stored at *where* = (UIDVALIDITY, UID) to *folder*."""
        st = folder.state
        raw = folder.raw
        if where is None or raw is None:
            # No APPENDUID/COPYUID (no UIDPLUS): the next sync shows it.
            if st is not None:
                st.checked = 0.0
            return None
        uidv, uid = where
        if st is None or st.uidvalidity != uidv:
            st = await self.tree.sync(folder, force=True)  # a folder never listed: its sync has the message
            return st.msgs.get(uid) if st is not None and st.uidvalidity == uidv else None
        if uid in st.msgs:
            return st.msgs[uid]
        try:
            metas = await self.pool.run(lambda c: c.fetch_new_meta(raw, uidv, uid), folder=raw)
        except BaseException:
            st.verified = False  # the next sync compares UID sets and finds it
            st.checked = 0.0
            raise
        self.tree.add(folder, st, metas)
        if uid not in st.msgs:
            # A connection whose selected view lagged, or metadata we could not use:
            # never leave a hole that counters alone would hide (issue 10 item 1).
            log.info("%s: UID %d not listed yet; the next sync compares UID sets",
                     raw.decode("ascii", "replace"), uid)
            st.verified = False
            st.checked = 0.0
        return st.msgs.get(uid)

    def _forget_msg(self, m: Msg) -> None:
        st = m.folder.state
        if st is not None and st.msgs.get(m.uid) is m:
            del st.msgs[m.uid]
            st.uids = sorted(st.msgs)
            st.on_disk.discard(m.uid)
            if m.folder.raw is not None and self.disk is not None:
                self.disk.remove_messages(m.folder.raw, m.uidvalidity, [m.uid])
        for name, a in list(m.folder.aliases.items()):
            if a is m:
                del m.folder.aliases[name]
        self.inodes.drop(m, m.folder.inode, m.name)

    async def move(self, m: Msg, dest: Folder, name: str | None = None) -> Msg | None:
        """Move *m* to *dest*: UID MOVE, else COPY + STORE \\Deleted + UID EXPUNGE of that UID.

        The original is removed only by the server's MOVE or after COPY was
        confirmed; without MOVE or UIDPLUS we refuse rather than EXPUNGE blindly.
        """
        self.writable()
        if not dest.selectable or dest.raw is None:
            raise Unsupported(f"{'/'.join(dest.path) or '/'} cannot hold messages (\\Noselect)")
        if dest is m.folder:
            raise Unsupported("a message keeps its name; renaming within a folder is not possible")

        async def send() -> tuple[int, int] | None:
            caps = self.caps
            if "MOVE" not in caps and "UIDPLUS" not in caps:
                log.error("refusing to move %s: the server has neither MOVE nor UIDPLUS, and a plain "
                          "EXPUNGE could remove other clients' deleted mail", m.name)
                raise Unsupported("server lacks MOVE and UIDPLUS")
            async with self._msg_lock(m):
                if m.gone:
                    raise NotFound(f"{m.name} is gone")
                src, uidv, uid, dst = m.folder.raw, m.uidvalidity, m.uid, dest.raw
                assert src is not None and dst is not None
                where, moved = await self.pool.run(lambda c: c.move_message(src, uidv, uid, dst), folder=src,
                                                   retry=False)
                self._forget_msg(m)
                if not moved:
                    raise NotFound(f"{m.name} was removed from the server by someone else")
                log.info("moved %s/%s to %s", src.decode("ascii", "replace"), m.name, dst.decode("ascii", "replace"))
                return where

        # A MOVE cut short may have happened in part; the replay checks the message is
        # still there before it moves it: a duplicate at worst, never a loss.
        where = await self._send_or_journal(send, lambda j, _tried: j.move(m, dest, name))
        if where is RECORDED:
            return None
        new = await self.new_msg(dest, where)
        m.successor = new
        if new is not None and name and name != new.name:
            dest.aliases[name] = new
        return new

    async def delete(self, m: Msg) -> None:
        """``rm``: into the trash folder when one is set, else \\Deleted + UID EXPUNGE of that UID."""
        self.writable()
        trash = self.trash_folder()
        if self.trash and trash is None:
            log.error("trash=%s: no such folder; refusing to delete %s for good", self.trash, m.name)
            raise Unsupported("trash folder not found")
        to_trash = trash if trash is not m.folder else None
        # Offline, the trash and UIDPLUS are the replay's business: the journal takes it as it is.
        if to_trash is not None and not self._journal_first():
            await self.move(m, to_trash)
            return
        if "UIDPLUS" not in self.caps and not self._journal_first():
            log.error("refusing to delete %s: the server lacks UIDPLUS, and a plain EXPUNGE could "
                      "remove other clients' deleted mail", m.name)
            raise Unsupported("server lacks UIDPLUS")
        done = await self._send_or_journal(lambda: self._expunge(m), lambda j, _tried: j.delete(m, to_trash))
        if done is not RECORDED:
            log.info("deleted %s/%s", (m.folder.raw or b"").decode("ascii", "replace"), m.name)

    async def set_flags(self, m: Msg, flags: list[str]) -> None:
        self.writable()
        check_flags(flags)
        sent = without_recent(flags)
        src, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
        assert src is not None
        done = await self._send_or_journal(
            lambda: self.pool.run(lambda c: c.uid_store(src, uidv, uid, "FLAGS.SILENT", list(sent)), folder=src),
            lambda j, _tried: j.flags(m, list(sent)))
        if done is RECORDED:
            return
        m.flags = sent
        self.flag_view.stored(m)
        if self.disk is not None:
            self.disk.set_flags(src, uidv, uid, sent)

    # -- the one fork between the server and the journal ---------------------------

    def _journal_first(self) -> bool:
        """A change goes to the journal without trying the server (it is away, and there is a journal)."""
        return self.tree.journal is not None and self.notes.is_offline()

    async def _send_or_journal(self, send: Callable[[], Awaitable[T]],
                               record: Callable[[Journal, bool], Awaitable[object]],
                               *, local: bool = False) -> T | _Recorded:
        """Send a change to the server, or have the offline journal record it: RECORDED then.

        Offline (or for a folder that exists only here, *local*) it is recorded without
        trying. If the server goes away while *send* runs, it is recorded all the same,
        and *record* is told it was tried (it may have happened in part: the replay checks
        before it repeats anything). Without a journal (``cache_dir=none``) the server's
        absence is the caller's error.
        """
        journal = self.tree.journal
        if journal is not None and (local or self.notes.is_offline()):
            await record(journal, False)
            return RECORDED
        try:
            return await send()
        except ServerUnavailable as err:
            if journal is None:
                raise
            # A folder the pool backs off is refused before anything is sent (FolderStalled.sent).
            await record(journal, not (isinstance(err, FolderStalled) and not err.sent))
            return RECORDED

    # -- new files and edits -------------------------------------------------

    def sendable(self, p: PendingFile) -> tuple[tuple[str, ...], int | None]:
        """The flags and date to APPEND *p* with. What the user set was checked when it was
        set; what an edit takes over from the old version is filtered here (a keyword another
        client stored, an INTERNALDATE out of range) rather than make the new version unsendable."""
        if p.flags is not None:
            flags = p.flags
            check_flags(flags)
        else:
            flags = p.replaces.flags if p.replaces else ()
            bad = [f for f in flags if not sendable_flag(f)]
            if bad:
                log.warning("%s: the old version's flags %s cannot be sent; storing the new one without them",
                            p.name or "an edited message", " ".join(repr(f) for f in bad))
                flags = tuple(f for f in flags if f not in bad)
        flags = without_recent(flags)
        if p.date is not None:
            date: int | None = p.date
            check_date(date)
        else:
            date = p.replaces.date if p.replaces else None
            try:
                check_date(date)
            except InvalidArgument:
                log.warning("%s: the old version's date %r cannot be sent; the server's time is used",
                            p.name or "an edited message", date)
                date = None
        return flags, date

    async def append(self, p: PendingFile) -> tuple[Folder, tuple[int, int] | None, int] | None:
        """The server's part of storing *p*: APPEND its current version → (its folder, the
        APPENDUID if any, the size sent), or None when the journal recorded it instead.

        The version sent is marked stored with no checkpoint after the APPEND returned,
        so a cancellation can never make us send it again. Called under the file's commit
        lock (Uploads.commit).
        """
        folder = p.folder
        raw = folder.raw
        assert raw is not None

        async def send() -> tuple[bytes, tuple[int, int] | None, int]:
            flags, date = self.sendable(p)
            meta = p.meta_generation  # flags, date and folder as read just above
            snap, data_gen = await trio.to_thread.run_sync(p.snapshot, limiter=self.tree.spool_limiter)
            size = len(snap)
            try:
                # A folder gone from the server (another client deleted or renamed it):
                # stored where the replay stores such mail, never dropped.
                box, where = await self.pool.run(
                    lambda c: c.append_or_recover(raw, snap, flags, date, RECOVERED), touches=raw, retry=False)
            finally:
                if not isinstance(snap, bytes):
                    snap.close()
            p.mark_clean(data_gen + meta)  # stored: no checkpoint since the APPEND returned
            return box, where, size

        # A connection lost during the APPEND: the replay looks it up by Message-ID first.
        sent = await self._send_or_journal(send, lambda j, tried: j.append(p, maybe_sent=tried),
                                           local=folder.local)
        if sent is RECORDED:
            return None
        box, where, size = sent
        if box != raw:
            log.warning("%s: folder %s is gone from the server: stored in %s instead",
                        p.name or "an edited message", raw.decode("ascii", "replace"), RECOVERED.decode())
            try:
                await self.tree.refresh_folders(force=True)
            except ImapfsError as e:  # stored all the same: the next listing shows it
                log.info("stored in %s; the folder list could not be read yet (%s)", RECOVERED.decode(), e)
            there = next((f for f in self.tree.folders() if f.raw == RECOVERED), None)
            return (there, where, size) if there is not None else (folder, None, size)
        return folder, where, size

    async def delete_exact(self, m: Msg) -> None:
        """\\Deleted + UID EXPUNGE of this one UID (an edit's old version; never into the trash)."""
        if "UIDPLUS" not in self.caps:
            log.warning("kept the old version of %s: without UIDPLUS it cannot be removed safely", m.name)
            return
        await self._expunge(m)

    async def _expunge(self, m: Msg) -> None:
        """\\Deleted + UID EXPUNGE of exactly this UID, under the message's lock, then forget it."""
        async with self._msg_lock(m):
            if m.gone:
                raise NotFound(f"{m.name} is gone")
            src, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
            assert src is not None
            await self.pool.run(lambda c: c.expunge_message(src, uidv, uid), folder=src, retry=False)
            self._forget_msg(m)

    # -- folders ---------------------------------------------------------------

    def _wire(self, f: Folder) -> bytes:
        """The server's name of an existing folder (or implied parent): never re-derived from its path.

        A directory name is not always the decoding of the server's name (a
        non-canonical one shows with `` #raw``), so commands must use what
        LIST said.
        """
        wire = f.raw if f.raw is not None else f.wire
        if wire is None:  # made before anything listed it (cannot happen for LIST's own nodes)
            wire = codec.encode_mutf7(codec.path_to_folder(f.path, self.tree.delimiter)).encode("ascii")
        return wire

    def _server_name(self, parent: Folder, name: str) -> bytes:
        """Server name of a new folder *name* in *parent*; ValueError/UnicodeError if it cannot have one.

        The parent's own server name + delimiter + the new level in mUTF-7.
        The level must be exactly the name it will show under
        (codec.new_level), so mkdir/rename never make a folder that then
        appears under another name.
        """
        level = codec.new_level(name, self.tree.delimiter)
        if parent is self.tree.root:
            return level
        if self.tree.delimiter is None:
            raise ValueError("the server has no folder hierarchy (no sub-folders)")
        return self._wire(parent) + self.tree.delimiter.encode("utf-8") + level

    def _check_new_name(self, parent: Folder, name: str) -> bytes:
        """Everything that can be checked before a CREATE or RENAME is sent → the new server name."""
        if name in parent.children or name in parent.pending:
            raise Exists(name)
        if parent is self.tree.root and codec.is_inbox(name):
            raise Exists(f"{name}: INBOX exists (its name is case-insensitive)")
        try:
            return self._server_name(parent, name)
        except (ValueError, UnicodeError) as e:
            raise InvalidArgument(f"cannot name a folder {name!r}: {e}") from None

    @staticmethod
    def _refused_name(e: CommandFailed) -> ImapfsError:
        """A NO to CREATE/RENAME that refuses the name ([CANNOT], or no code at all) is EINVAL."""
        text = str(e)
        if ": NO " in text:
            reply = text.rsplit(": NO ", 1)[1]  # the server's words come last (the name could hold ": NO ")
            if reply.startswith("[CANNOT]") or not reply.startswith("["):
                return InvalidArgument(text)
        return e

    async def mkdir(self, parent: Folder, name: str) -> Folder:
        """CREATE; the server is left as it was whenever this raises (except a lost connection after CREATE)."""
        self.writable()
        raw = self._check_new_name(parent, name)
        shown: list[Folder] = []  # the folder the journal shows

        async def record(journal: Journal, _tried: bool) -> None:
            if not codec.offline_level_ok(name):
                self.notes.note(("mkdir-name", name), f"a folder named {name!r} needs the server to accept its name; "
                                "try again when it is back (offline, use letters, digits, spaces, '-' and '_')")
                raise Offline(f"a folder named {name!r} needs the server")
            shown.append(await journal.mkdir(parent, name, raw))  # a CREATE cut short: replay takes "exists"

        try:
            made = await self._send_or_journal(lambda: self.pool.run(lambda c: c.create(raw), retry=False), record)
        except CommandFailed as e:
            raise self._refused_name(e) from None
        if made is RECORDED:
            return shown[0]
        try:
            await self.pool.run(lambda c: c.subscribe(raw))
        except (CommandFailed, ServerUnavailable) as e:
            log.warning("created %r but could not subscribe to it: %s", raw, e)
        log.info("created folder %s", raw.decode("ascii", "replace"))
        await self.tree.refresh_folders(force=True)
        child = parent.children.get(name)
        if child is not None and child.raw == raw:
            return child
        if not self.pool.online:
            # CREATE was answered OK, the listing could not be read: show it; the next LIST confirms.
            child = self.tree.ensure_path(parent.path + (name,), None)
            child.raw, child.wire, child.selectable = raw, raw, True
            return child
        # The server keeps it under another name (or not at all): take back what this CREATE made.
        log.warning("the server created %r but does not list it under that name; deleting it again", raw)
        try:
            await self.pool.run(lambda c: c.delete_if_empty(raw), retry=False)
        except ImapfsError as e:
            log.error("could not delete %r again (%s); it may show under another name", raw, e)
        await self.tree.refresh_folders(force=True)
        raise InvalidArgument(f"the server does not keep a folder named {name!r} under that name")

    def _online_only(self, what: str) -> None:
        if self.notes.is_offline():
            self.notes.note(("only-online", what), f"{what} needs the server; try again when it is back")
            raise Offline(f"{what} needs the server")

    async def rmdir(self, parent: Folder, name: str) -> None:
        self.writable()
        self._online_only("removing a folder")
        f = parent.children.get(name)
        if f is None:
            raise NotFound(name)
        if f.path == ("INBOX",):
            raise Unsupported("INBOX cannot be removed")
        if f.children or f.pending:
            raise NotEmpty(name)
        if f.selectable:
            st = await self.tree.sync(f, force=True)
            if st is not None and st.msgs:
                raise NotEmpty(name)
        raw = self._wire(f)
        await self.pool.deselect_everywhere(raw)
        try:
            if f.selectable:
                await self.pool.run(lambda c: c.delete_if_empty(raw), retry=False)
            else:
                await self.pool.run(lambda c: c.delete(raw), retry=False)
        except (CommandFailed, NotFound):
            if f.selectable:
                raise
            # An implied parent (\Noselect) may not exist as a mailbox at all:
            # gone from LIST is what rmdir asked for.
            await self.tree.refresh_folders(force=True)
            if name in parent.children:
                raise
            return
        try:
            await self.pool.run(lambda c: c.unsubscribe(raw))
        except (CommandFailed, ServerUnavailable):
            pass
        log.info("deleted folder %s", raw.decode("ascii", "replace"))
        del parent.children[name]
        self.tree.remove_subtree(f)
        self.inodes.drop(f, parent.inode, name)

    async def rename_folder(self, f: Folder, dest: Folder, name: str) -> None:
        """RENAME; checked before it is sent, and undone if the server keeps another name."""
        self.writable()
        self._online_only("renaming a folder")
        if f.path == ("INBOX",):
            raise Unsupported("INBOX cannot be renamed (IMAP would move its messages instead)")
        node: Folder | None = dest
        while node is not None:
            if node is f:
                raise InvalidArgument("cannot move a folder into itself")
            node = node.parent
        new_raw = self._check_new_name(dest, name)
        old_raw = self._wire(f)
        new_path = dest.path + (name,)
        await self.pool.deselect_everywhere(old_raw)
        try:
            await self.pool.run(lambda c: c.rename(old_raw, new_raw), retry=False)
        except CommandFailed as e:
            raise self._refused_name(e) from None
        log.info("renamed folder %s to %s", old_raw.decode("ascii", "replace"), new_raw.decode("ascii", "replace"))
        self.pool.forget_selected(old_raw)
        # Keep the nodes and their inodes: the kernel moved its dentry to the
        # new name and still holds these inodes.
        assert f.parent is not None
        del f.parent.children[f.name]
        old_path = f.path
        stack = [f]
        while stack:
            n = stack.pop()
            n.path = new_path + n.path[len(old_path):]
            for attr in ("raw", "wire"):
                w = getattr(n, attr)
                if w is not None and (w == old_raw
                                      or w.startswith(old_raw + (self.tree.delimiter or "").encode("utf-8"))):
                    setattr(n, attr, new_raw + w[len(old_raw):])
            stack.extend(n.children.values())
        f.parent = dest
        dest.children[name] = f
        await self.tree.refresh_folders(force=True)
        if dest.children.get(name) is f or not self.pool.online:
            return
        log.warning("the server renamed %r to %r but does not list it under that name; renaming it back",
                    old_raw, new_raw)
        try:
            await self.pool.run(lambda c: c.rename(new_raw, old_raw), retry=False)
        except ImapfsError as e:
            log.error("could not rename %r back to %r (%s)", new_raw, old_raw, e)
        await self.tree.refresh_folders(force=True)
        raise InvalidArgument(f"the server does not keep a folder named {name!r} under that name")

    async def flags(self, m: Msg) -> tuple[str, ...]:
        """Current flags (they change under us): from the tree, at most FLAGS_FRESH old (imapfs.flagview)."""
        return await self.flag_view.flags(m)
