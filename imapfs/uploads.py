"""Files being written: the registry of pending files, and the uploader that stores them.

A new file, or a message opened for writing, is a ``PendingFile`` (its bytes
in memory or spooled to disk). Once released and quiet for ``APPEND_QUIET``
the uploader stores it (APPEND through :meth:`Writes.append`, or a journal
record while the server is away), then shows the new message and expunges
what it replaces. Nothing here is dropped silently: a file that cannot be
stored goes to the unsent folder (invariant 3, docs/writes.md).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

import trio

from . import naming
from .errors import CommandFailed, Exists, ImapfsError, NotFound, ServerUnavailable, TooLarge, Unsupported
from .model import CHUNK, Folder, Msg, check_date, check_flags, without_recent
from .pending import PendingFile

if TYPE_CHECKING:  # the tree builds Uploads with itself
    from .tree import Tree

log = logging.getLogger(__name__)

APPEND_QUIET = 0.5  # seconds a released file waits for rsync's utimens/setxattr/rename
REFUSED_APPEND_TRIES = 3  # a server that answers NO this often will not change its mind
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024  # -o max_message=: the largest file written into the mount


def appendlimit(caps: frozenset[str]) -> int | None:
    """The server's APPENDLIMIT=n (RFC 7889), if it announces one for every folder."""
    for c in caps:
        if c.startswith("APPENDLIMIT="):
            v = c[len("APPENDLIMIT="):]
            if v.isascii() and v.isdigit() and len(v) <= 19:
                return int(v)
    return None


class Uploads:
    """Every file not stored yet, and the task that stores them."""

    def __init__(self, tree: Tree, *, spool_dir: str | None = None, unsent_dir: str | None = None,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.tree = tree
        self.writes = tree.writes
        self.inodes = tree.inodes
        self.notifier = tree.notifier
        self.clock = tree.clock
        self.spool_dir = spool_dir
        self.unsent_dir = unsent_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imapfs", "unsent")
        self.max_message = max_message
        self._work: set[PendingFile] = set()  # every file not yet stored (the uploader's work list)
        self._commit_locks: weakref.WeakKeyDictionary[PendingFile, trio.Lock] = weakref.WeakKeyDictionary()
        self._wakeup = trio.Event()

    @property
    def caps(self) -> frozenset[str]:
        return self.tree.pool.capabilities

    # -- the registry -------------------------------------------------------------

    def new_pending(self, folder: Folder, name: str | None, replaces: Msg | None = None) -> PendingFile:
        """A new file being written, with its own inode, on the uploader's work list."""
        p = PendingFile(folder, name or "", self.inodes.next_pending(), replaces=replaces, spool_dir=self.spool_dir)
        self._commit_locks[p] = trio.Lock()  # one commit of a file at a time
        self.inodes.enter(p)
        self._work.add(p)
        return p

    def track(self, p: PendingFile) -> None:
        """*p* is owed to the server (again): the uploader stores it once it is quiet."""
        self._work.add(p)

    def untrack(self, p: PendingFile) -> None:
        """*p* is not the uploader's any more (stored, or the offline journal owns it)."""
        self._work.discard(p)

    def tracked(self, p: PendingFile) -> bool:
        return p in self._work

    def rejournal(self, p: PendingFile) -> None:
        """A file already in the offline journal changed (written, renamed): record it again;
        the new record supersedes the old one (see Journal.append)."""
        p.changed()
        self._work.add(p)

    def reopen(self, p: PendingFile) -> None:
        """More writes to a file that was already stored: it is pending again, as a new version."""
        p.reopen()
        self._work.add(p)
        if p.name:
            p.folder.pending[p.name] = p

    def create_file(self, folder: Folder, name: str) -> PendingFile:
        self.writes.writable()
        if not folder.selectable or folder.raw is None:
            raise Unsupported(f"{'/'.join(folder.path) or '/'} cannot hold messages")
        if name in folder.children or name in folder.pending:
            raise Exists(name)
        p = self.new_pending(folder, name)
        p.changed()  # an empty new file is still a file the user made
        folder.pending[name] = p
        return p

    async def open_for_write(self, m: Msg, truncate: bool) -> PendingFile:
        """An edit: a new version is buffered; on release it is APPENDed, then the old one expunged."""
        self.writes.writable()
        unknown = not self.caps and self.tree.journal is not None  # started offline: decided at replay
        if "UIDPLUS" not in self.caps and not unknown:
            log.error("refusing to edit %s: without UIDPLUS the old version cannot be removed safely", m.name)
            raise Unsupported("server lacks UIDPLUS")
        p = self.new_pending(m.folder, None, replaces=m)
        if not truncate:
            try:
                for off in range(0, m.size, CHUNK):  # a chunk at a time: a big message never sits in memory
                    piece = await self.tree.content.read(m, off, CHUNK)
                    if piece:
                        await trio.to_thread.run_sync(p.write, off, piece, limiter=self.tree.spool_limiter)
            except BaseException:
                self.discard(p)
                raise
            p.mark_clean(p.generation)  # the old version: nothing to store yet
        return p

    def opened(self, p: PendingFile) -> None:
        p.opens += 1
        p.ready_at = None

    def released(self, p: PendingFile) -> None:
        p.opens = max(0, p.opens - 1)
        if p.opens == 0:
            self.touch(p)
            if not p.dirty and p.name == "" and p.committed is None and not p.superseded:
                self.discard(p)  # opened for writing, nothing written

    def touch(self, p: PendingFile) -> None:
        """Restart the quiet period (rsync's utimens/setxattr/rename follow the close).

        A dirty file is (again) the uploader's: a journaled one that gets a new date or
        flags after its record must be stored or recorded again (the soak test found
        such a file shown under its writer's name for good)."""
        if p.dirty and not p.gone:
            self._work.add(p)
        if p.opens == 0 and p.dirty:
            p.ready_at = self.clock() + APPEND_QUIET
            self._wakeup.set()

    def set_pending_flags(self, p: PendingFile, flags: list[str]) -> None:
        check_flags(flags)
        p.flags = without_recent(flags)
        p.changed()
        self.touch(p)

    def set_pending_date(self, p: PendingFile, when: int) -> None:
        check_date(when)
        p.date = when
        p.changed()
        self.touch(p)

    def message_limit(self) -> int:
        """The largest file that may be written: ``-o max_message=``, or the server's APPENDLIMIT if lower."""
        limit = appendlimit(self.caps)
        return self.max_message if limit is None else min(self.max_message, limit)

    def _check_size(self, p: PendingFile, size: int) -> None:
        """EFBIG past the limit. The file is then marked: what was written is incomplete
        (cp stopped half way), so it is not stored as mail but saved aside (see uploader)."""
        limit = self.message_limit()
        if size > limit:
            log.info("refused: %s would be %d bytes, more than the %d this mount stores "
                     "(-o max_message= or the server's APPENDLIMIT)", p.name or "an edited message", size, limit)
            p.too_large = True
            raise TooLarge(f"{p.name or 'an edited message'} would be {size} bytes (limit {limit})")

    async def write_pending(self, p: PendingFile, offset: int, data: bytes) -> int:
        """write(2) on a file being written: EFBIG past the limit; the bytes go in a worker thread."""
        if not data:
            return 0
        self._check_size(p, offset + len(data))
        if p.committed is not None:
            self.reopen(p)  # written again after it was stored: a new version
        elif p.journal_seq is not None:
            self._work.add(p)  # written again after it was journaled: record it again
        return await trio.to_thread.run_sync(p.write, offset, data, limiter=self.tree.spool_limiter)

    async def truncate_pending(self, p: PendingFile, size: int) -> None:
        """truncate/ftruncate: sparse, so growing allocates nothing; EFBIG past the limit.
        Truncating to a size within the limit starts over: the file may be stored again."""
        self._check_size(p, size)
        if p.journal_seq is not None:
            self._work.add(p)
        await trio.to_thread.run_sync(p.truncate, size, limiter=self.tree.spool_limiter)
        p.too_large = False

    async def read_pending(self, p: PendingFile, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(p.read, offset, size, limiter=self.tree.spool_limiter)

    def rename_pending(self, p: PendingFile, dest: Folder, name: str) -> None:
        self.writes.writable()
        if not dest.selectable or dest.raw is None:
            raise Unsupported("that folder cannot hold messages")
        if name in dest.children:
            raise Exists(name)
        if p.folder.pending.get(p.name) is p:
            del p.folder.pending[p.name]
        old = dest.pending.pop(name, None)
        if old is not None and old is not p:
            self.discard(old)
        target = dest.aliases.get(name)
        if target is None:
            parsed = naming.parse_message_name(name)
            st = dest.state
            cand = st.msgs.get(parsed[0]) if parsed and st else None
            target = cand if cand is not None and cand.name == name else None
        if target is not None and not target.gone:
            p.replaces = target  # a save over an existing message: the old one goes after the new is stored
        if dest is not p.folder:
            p.changed()  # a copy being APPENDed to the old folder must be stored again in the new one
        p.folder = dest
        p.name = name
        dest.pending[name] = p
        if p.journal_seq is not None:
            self.rejournal(p)  # its recorded folder or name is stale now
        self.touch(p)

    def discard(self, p: PendingFile) -> None:
        if p.folder.pending.get(p.name) is p:
            del p.folder.pending[p.name]
        self._work.discard(p)
        p.gone = True
        self.inodes.discard_pending(p.inode)
        p.close()

    def unlink_pending(self, p: PendingFile) -> None:
        self.discard(p)


    async def commit(self, p: PendingFile) -> Msg | None:
        """Store the current version of *p*: APPEND, then expunge what it replaces, then show it.

        One commit of a file at a time: a second one (fsync while the uploader is at it) waits,
        then finds the file clean, so a file is never APPENDed twice. The version sent is
        marked stored only if the file did not change meanwhile; otherwise the newer version
        stays dirty, is stored next, and the copy stored now is expunged once it is.
        """
        lock = self._commit_locks[p]
        if lock.locked():
            log.debug("%s: waits for the APPEND in progress", p.name or "an edited message")
        async with lock:
            committed = await self._commit(p)
        return committed

    async def _commit(self, p: PendingFile) -> Msg | None:
        if p.gone or not p.dirty:
            return p.committed
        if p.too_large:
            raise TooLarge(f"{p.name or 'an edited message'} was cut short by the size limit; it is not stored")
        sent = await self.writes.append(p)
        if sent is None:
            return None  # recorded in the offline journal
        folder, where, size = sent
        # The version sent is marked stored; the rest runs to its end (shielded).
        with trio.CancelScope(shield=True):
            new = await self._stored(p, folder, where, size)
        return new

    async def _retire(self, m: Msg, new: Msg | None, failed: str) -> None:
        """UID EXPUNGE of an older version *m* now that *new* is stored; a failure leaves both."""
        try:
            await self.writes.delete_exact(m)
            m.successor = new
        except NotFound:
            pass
        except Exception as e:  # noqa: BLE001 - a duplicate, never a loss
            log.warning("%s (%s); both are on the server", failed, e)

    async def _stored(self, p: PendingFile, folder: Folder, where: tuple[int, int] | None,
                      size: int) -> Msg | None:
        """After an APPEND of *p* to *folder*: show the new message, expunge what it replaces."""
        raw = folder.raw or b""
        name = p.name or "a new version"
        log.info("stored %s in %s (%d bytes)", name, raw.decode("ascii", "replace"), size)
        if self.tree.journal is not None and p.journal_seq is not None:
            try:
                await self.tree.journal.supersede(p)
            except Exception as e:  # noqa: BLE001 - the replay finds it stored (same bytes) at worst
                log.warning("stored %s, but its offline record could not be dropped (%s)", name, e)
        # The message is on the server now: nothing below may make us store it
        # again, so what follows is best effort and only logged.
        new: Msg | None = None
        try:
            new = await self.writes.new_msg(folder, where)
        except Exception as e:  # noqa: BLE001
            log.warning("stored %s but could not list it yet (%s); the next sync shows it", p.name, e)
            if folder.state is not None:
                folder.state.checked = 0.0
        if p.gone:
            # Removed (rm, or replaced by a rename) while its APPEND was on the way: what the
            # user last saw is no such file, so the copies we stored of it go too (by UID).
            # Whatever it was to replace is left alone.
            for copy in ([new] if new is not None else []) + p.superseded:
                if copy.gone:
                    continue
                try:
                    await self.writes.delete_exact(copy)
                    log.info("%s was removed while it was being stored; its stored copy is removed too", name)
                except Exception as e:  # noqa: BLE001 - a message the user removed stays: never a loss
                    log.warning("%s was removed while it was being stored, but its stored copy stays (%s)",
                                name, e)
            p.superseded.clear()
            return None
        old = p.replaces
        if old is not None and not old.gone:
            await self._retire(old, new, f"stored the new version of {old.name} but could not remove the old one")
        for earlier in list(p.superseded):  # our own copies of earlier versions of this file
            p.superseded.remove(earlier)
            if earlier is new or earlier.gone:
                continue
            await self._retire(earlier, new, f"stored {name} but could not remove the copy of its earlier version")
        if p.dirty:
            # Written (or renamed, or its flags set) while the APPEND was on its way: the
            # server has an earlier version. Store the newer one too; this copy goes once it is.
            if new is not None:
                p.superseded.append(new)
            else:
                log.warning("%s changed while it was being stored; without APPENDUID the copy of the "
                            "earlier version cannot be told apart and stays on the server", name)
            log.info("%s changed while it was being stored; the newer version follows", name)
            self._work.add(p)
            self.touch(p)
            return None
        p.committed = new
        self._work.discard(p)
        if folder.pending.get(p.name) is p:
            del folder.pending[p.name]
            self.notifier.entry_removed(folder.inode, p.name)
        if new is not None and p.name and p.name != new.name:
            folder.aliases[p.name] = new
        return new


    def all_pending(self) -> list[PendingFile]:
        return [p for p in self._work if not p.gone]

    async def uploader(self) -> None:
        """Background task: APPEND released files once their writer has been quiet."""
        while True:
            now = self.clock()
            due = [p for p in self.all_pending()
                   if p.opens == 0 and p.dirty and p.ready_at is not None and p.ready_at <= now]
            for p in due:
                try:
                    if p.too_large:
                        await self._set_aside_too_large(p)
                        continue
                    await self._commit_logged(p)
                except Exception:  # noqa: BLE001 - a bug costs this file's turn, never the uploader
                    log.exception("storing %s failed unexpectedly; trying again in 60 s", p.name)
                    p.ready_at = self.clock() + 60
            self._wakeup = trio.Event()
            with trio.move_on_after(0.1 if self.all_pending() else 5):
                await self._wakeup.wait()

    async def _set_aside(self, p: PendingFile, why: str) -> bool:
        """Save the bytes of a file that cannot be stored to the unsent folder; False if that fails too."""
        try:
            path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir, limiter=self.tree.spool_limiter)
        except OSError as err:
            log.critical("could not save %s to %s either (%s); keeping it in memory",
                         p.name or "an edited message", self.unsent_dir, err)
            return False
        log.error("%s; its bytes are saved in %s", why, path)
        self.discard(p)
        self.notifier.entry_removed(p.folder.inode, p.name)
        return True

    async def _set_aside_too_large(self, p: PendingFile) -> None:
        """A file cut short by EFBIG: not mail (the writer stopped half way); saved aside, not stored."""
        name = p.name or "an edited message"
        if p.size == 0:  # `truncate -s 50G x.eml`: nothing was written
            log.info("%s was refused as too large and holds nothing; dropped", name)
            self.discard(p)
            self.notifier.entry_removed(p.folder.inode, p.name)
            return
        try:
            path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir, limiter=self.tree.spool_limiter)
        except OSError as err:
            log.critical("could not save %s to %s (%s); keeping it in memory", name, self.unsent_dir, err)
            p.ready_at = self.clock() + 60
            return
        log.warning("%s grew past the size limit (EFBIG) and is not stored as mail; what was written "
                    "(%d bytes) is saved in %s", name, p.size, path)
        self.discard(p)
        self.notifier.entry_removed(p.folder.inode, p.name)

    async def _commit_logged(self, p: PendingFile) -> None:
        """The uploader's commit: any failure is this file's, retried with a growing delay.

        A server that is away is waited for as long as the mount lives. Any other failure
        (NO, a value imaplib cannot send, a bug) counts, and after REFUSED_APPEND_TRIES of
        them the bytes are saved to the unsent folder: never retried forever, never dropped.
        """
        try:
            await self.commit(p)
            p.failures = p.refusals = 0
        except Exception as e:  # noqa: BLE001 - keep the bytes, retry later
            p.failures += 1
            p.last_error = str(e) if isinstance(e, ImapfsError) else f"{type(e).__name__}: {e}"
            name = p.name or "an edited message"
            where = (p.folder.raw or b"").decode("ascii", "replace")
            if not isinstance(e, ServerUnavailable):
                p.refusals += 1
                if p.refusals >= REFUSED_APPEND_TRIES:
                    # Retrying forever helps nobody (e.g. "Can't save a zero byte message");
                    # keep the bytes where the user can find them.
                    if isinstance(e, CommandFailed):
                        why = f"the server refused to store {name} in {where} {p.refusals} times ({e})"
                    else:
                        why = f"could not store {name} in {where} ({p.refusals} attempts failed: {p.last_error})"
                    if not await self._set_aside(p, why):
                        p.ready_at = self.clock() + 60
                    return
            delay = min(60.0, 2.0 ** min(p.failures, 6))
            p.ready_at = self.clock() + delay
            log.error("could not store %s in %s: %s (will retry in %.0f s)", name, where, p.last_error, delay)

    async def flush_all(self) -> None:
        """At unmount: store every pending file; save what cannot be stored, never drop it."""
        for p in self.all_pending():
            if p.too_large:
                await self._set_aside_too_large(p)
                continue
            for _ in range(3):  # a version that changed during its APPEND is stored next
                if p.gone or not p.dirty:
                    break
                try:
                    with trio.fail_after(60):
                        await self.commit(p)
                except Exception as e:  # noqa: BLE001
                    err = str(e) if isinstance(e, ImapfsError) else f"{type(e).__name__}: {e}"
                    try:
                        path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir)
                    except OSError as oserr:
                        log.critical("could not store %s in %s at unmount (%s) nor save it in %s (%s)",
                                     p.name or "an edited message", p.folder.raw, err, self.unsent_dir, oserr)
                        break
                    log.error("could not store %s in %s at unmount (%s); its bytes are saved in %s",
                              p.name or "an edited message", p.folder.raw, err, path)
                    break

