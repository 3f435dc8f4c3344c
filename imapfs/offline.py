"""Disconnected use: changes made while the server is away, and their replay.

While the pool is offline (the server was unreachable at mount time, went
away, or ``-o offline``), ``mv``, ``rm``, flag changes, ``mkdir`` and new files
are recorded in the store's journal — on disk (fsynced) before the system
call returns — and shown in the tree at once: moved and deleted messages
are hidden where they were, moved ones shown where they went, new files
stay visible with their bytes. Nothing in the *cache* is changed for them:
the cache holds what the server had; the journal holds what we owe it.

On reconnect the journal is replayed in order with the same no-loss rules
as online writes (Connection.move_message / expunge_message); the talking to
the server about each entry is imapfs.replay's (Sender), the order, the
counting of failures and the settling of the tree afterwards are here. The
order kept is each folder's: an entry that cannot go through yet (its folder
stalls or is refused) holds back the later entries that touch its folders,
not those of other folders (``_Held``). A change that
no longer applies — the message is gone, UIDVALIDITY changed — is skipped,
logged, and shown in ``user.imapfs.state``; a new message is never dropped:
if its folder is gone it goes to ``imapfs-recovered``. An APPEND marked as
started before a crash is looked up by Message-ID before it is sent again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .disk import Disk
from .errors import CommandFailed, FolderStalled, ImapfsError, InvalidArgument, ServerUnavailable
from .model import Folder, FolderState, Msg, flags_unsaved, without_recent
from .naming import parts_names
from .pending import PendingFile
from .replay import Sender, Skip, describe
from .store import JournalEntry, NoSuchEntry
from .tree import Tree

if TYPE_CHECKING:  # Keeper.bulk, the Bulk mount passes in: offline imports nothing of bulk
    from .bulk import Bulk

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
REFUSED_TRIES = 3  # an APPEND the server answers NO this often is saved aside (like online)
FOLDER_KEYS = ("src", "dest", "folder", "trash")  # the journal args that name server folders
_PER_FOLDER_OPS = ("move", "delete", "flags", "append")


def entry_folders(e: JournalEntry) -> frozenset[bytes] | None:
    """The server folders journal entry *e* acts on; None if it may act on any.

    None for a change of the folder list (mkdir: a later entry may need the folder),
    an unknown change, or a record whose folders cannot be read: such an entry is
    replayed in order with everything. An APPEND's fallback folder (imapfs-recovered
    when its own is gone) is left out: messages stored there do not depend on each
    other's order, and counting it would chain every APPEND to every other.
    """
    if e.op not in _PER_FOLDER_OPS:
        return None
    out: set[bytes] = set()
    for key in FOLDER_KEYS:
        v = e.args.get(key)
        if isinstance(v, bytes):
            out.add(v)
        elif v is not None:
            return None
    for earlier in e.args.get("superseded") or ():  # our copies of a file's earlier versions, removed with it
        if not isinstance(earlier, (list, tuple)) or not earlier or not isinstance(earlier[0], bytes):
            return None
        out.add(earlier[0])
    return frozenset(out) if out else None


@dataclass
class _Held:
    """What one replay round holds back: the folders of entries that did not go through.

    Within a folder the journal's order is the user's (a file written then moved, a flag
    set then the message deleted), so an entry waits when it touches a folder of an entry
    that waits, and its own folders then wait too (a move A -> C that waits for A makes
    C's later entries wait). Entries that share no folder with a waiting one do not depend
    on it and go on: one folder the server stalls on or refuses holds back only its own.
    An entry whose folders are unknown (``entry_folders`` None) waits for any waiting
    entry, and once it waits, so does everything after it.
    """

    folders: set[bytes] = field(default_factory=set)
    everything: bool = False

    def holds(self, folders: frozenset[bytes] | None) -> bool:
        if self.everything:
            return True
        if folders is None:
            return bool(self.folders)
        return not self.folders.isdisjoint(folders)

    def add(self, folders: frozenset[bytes] | None) -> None:
        if folders is None:
            self.everything = True
        else:
            self.folders |= folders


@dataclass(frozen=True, eq=False)
class _Overlay:
    """One thing a recorded move or delete shows until it is done: its message hidden in
    the source folder, or listed (or known by its writer's name) in the destination."""

    kind: str  # "hidden", "entry" or "alias"
    folder: Folder
    msg: Msg
    name: str = ""


class Journal:
    """Records offline changes, shows them, and replays them when the server is back."""

    def __init__(self, tree: Tree, disk: Disk) -> None:
        self.tree = tree
        self.disk = disk
        self.store = disk.store
        self.pending = 0
        self.not_applied: list[str] = []
        self._lock = trio.Lock()
        # Folders a replay touched whose settling could not finish (the server went
        # away again): settled at the next round, else their overlays stay for good.
        self._unsettled: set[bytes] = set()
        self._announced = 0  # the count of changes the last "replaying" log line gave
        # What each recorded move or delete shows (by journal seq): taken down as soon as
        # that entry is done, whatever else the journal still owes the folders involved.
        self._shown: dict[int, list[_Overlay]] = {}
        self.sender = Sender(tree, disk)
        tree.attach_journal(self)

    # -- recording --------------------------------------------------------------

    async def _record(self, op: str, args: dict[str, Any], blob: bytes | None = None) -> int:
        seq = await self.disk.call(self.store.journal_add, op, args, blob)
        self.pending += 1
        log.info("recorded %s (#%d) in the journal; it goes to the server when the server, or the "
                 "folder, answers again", op, seq)
        return seq

    async def move(self, m: Msg, dest: Folder, name: str | None) -> None:
        seq = await self._record("move", {"src": m.folder.raw, "uidvalidity": m.uidvalidity, "uid": m.uid,
                                          "dest": dest.raw, "name": name})
        self._shown[seq] = self._show_move(m, dest, name)

    async def delete(self, m: Msg, trash: Folder | None) -> None:
        seq = await self._record("delete", {"folder": m.folder.raw, "uidvalidity": m.uidvalidity, "uid": m.uid,
                                            "trash": trash.raw if trash is not None else None})
        self._shown[seq] = self._show_delete(m, trash)

    async def flags(self, m: Msg, flags: list[str]) -> None:
        await self._record("flags", {"folder": m.folder.raw, "uidvalidity": m.uidvalidity, "uid": m.uid,
                                     "flags": list(flags)})
        m.flags = tuple(flags)
        flags_unsaved(m)

    async def mkdir(self, parent: Folder, name: str, raw: bytes) -> Folder:
        path = parent.path + (name,)
        await self._record("mkdir", {"name": raw, "path": list(path)})
        return self._show_mkdir(path, raw)

    async def append(self, p: PendingFile, maybe_sent: bool = False) -> None:
        """Record the current version of *p*. Called under the file's commit lock (Tree.commit).

        Only the version recorded is marked clean: a write made while the record is
        being written keeps the file dirty, and the uploader records it again (the new
        record supersedes this one).
        """
        data, data_gen = await trio.to_thread.run_sync(p.data_and_generation)  # a big file: off the loop
        meta = p.meta_generation
        folder = p.folder
        flags = p.flags if p.flags is not None else (p.replaces.flags if p.replaces else ())
        date = p.date if p.date is not None else (p.replaces.date if p.replaces else None)
        replaces = [p.replaces.uidvalidity, p.replaces.uid] if p.replaces is not None else None
        # Our own copies of earlier versions (stored while it was being written): removed once this is.
        earlier = [[m.folder.raw, m.uidvalidity, m.uid] for m in p.superseded if not m.gone and m.folder.raw]
        seq = await self._record("append", {"folder": folder.raw, "flags": list(without_recent(flags)),
                                            "date": date, "replaces": replaces, "name": p.name,
                                            "superseded": earlier}, data)
        # No await between the record and the file knowing its seq: a replay that ran in
        # between would store the file without seeing that its writer's name is done.
        old_seq, p.journal_seq = p.journal_seq, seq
        p.superseded.clear()
        p.mark_clean(data_gen + meta)
        if p.dirty:  # changed while it was being recorded: that version is recorded next
            self.tree.uploads.touch(p)
        else:
            self.tree.uploads.untrack(p)  # the journal owns it now; the uploader must not send it too
        if maybe_sent:  # the connection died during an APPEND: it may be on the server already
            await self.disk.call(self.store.journal_started, seq)
        await self._supersede_seq(old_seq)  # an earlier record of this file is void

    async def supersede(self, p: PendingFile) -> None:
        """Drop the journal record of an older version of *p* (a newer one is recorded or stored)."""
        old = p.journal_seq
        p.journal_seq = None
        await self._supersede_seq(old)

    async def _supersede_seq(self, old: int | None) -> None:
        if old is None:
            return
        if old in {e.seq for e in await self.disk.call(self.store.journal_pending)}:
            await self.disk.call(self.store.journal_skip, old, "superseded by a later version of the file")
            self.pending -= 1

    # -- showing what is owed ---------------------------------------------------------

    def _find(self, folder_raw: bytes, uidvalidity: int, uid: int) -> Msg | None:
        for f in self.tree.folders():
            if f.raw == folder_raw and f.state is not None and f.state.uidvalidity == uidvalidity:
                return f.state.msgs.get(uid)
        return None

    def _folder(self, raw: bytes | None) -> Folder | None:
        if raw is None:
            return None
        for f in self.tree.folders():
            if f.raw == raw:
                return f
        return None

    def _hide(self, m: Msg) -> _Overlay:
        f = m.folder
        f.hidden.add((m.uidvalidity, m.uid))
        st = f.state
        if st is not None and st.msgs.get(m.uid) is m:
            del st.msgs[m.uid]
            st.uids = sorted(st.msgs)
        self.tree.notifier.entry_removed(f.inode, m.name)
        for name in parts_names(m.stem):
            self.tree.notifier.entry_removed(f.inode, name)
        return _Overlay("hidden", f, m)

    def _show_move(self, m: Msg, dest: Folder, name: str | None) -> list[_Overlay]:
        shown = [self._hide(m), _Overlay("entry", dest, m, m.name)]
        dest.offline_entries[m.name] = m
        if name and name != m.name:
            dest.aliases[name] = m
            shown.append(_Overlay("alias", dest, m, name))
        return shown

    def _show_delete(self, m: Msg, trash: Folder | None) -> list[_Overlay]:
        shown = [self._hide(m)]
        if trash is not None and trash is not m.folder:
            trash.offline_entries[m.name] = m
            shown.append(_Overlay("entry", trash, m, m.name))
        return shown

    def _take_down(self, left_seqs: set[int]) -> set[Folder]:
        """Remove what done entries show; the folders to list again from the server."""
        changed: set[Folder] = set()
        for seq in [s for s in self._shown if s not in left_seqs]:
            for o in self._shown.pop(seq):
                f, m = o.folder, o.msg
                if o.kind == "hidden":
                    if (m.uidvalidity, m.uid) in f.hidden:
                        f.hidden.discard((m.uidvalidity, m.uid))
                        if f.state is not None:
                            # A move not applied leaves the message where it was; an
                            # incremental QRESYNC sync would not bring it back.
                            f.state.highestmodseq = None
                            f.state.verified = False
                elif o.kind == "entry":
                    if f.offline_entries.get(o.name) is m:
                        del f.offline_entries[o.name]
                        self.tree.notifier.entry_removed(f.inode, o.name)
                        for name in parts_names(m.stem):
                            self.tree.notifier.entry_removed(f.inode, name)
                elif f.aliases.get(o.name) is m:
                    del f.aliases[o.name]
                changed.add(f)
        return changed

    def _show_mkdir(self, path: tuple[str, ...], raw: bytes) -> Folder:
        node = self.tree.ensure_path(path)
        node.raw = raw
        node.selectable = True
        if node.state is None:
            node.state = FolderState(0, None, 0, checked=self.tree.clock())
        node.local = True
        return node

    async def restore(self) -> None:
        """At mount: show what an earlier run recorded and did not send yet."""
        entries = await self.disk.call(self.store.journal_pending)
        self.pending = len(entries)
        for e in entries:
            a = e.args
            try:
                if e.op == "move":
                    m = self._find(a["src"], a["uidvalidity"], a["uid"])
                    dest = self._folder(a["dest"])
                    if m is not None and dest is not None:
                        self._shown[e.seq] = self._show_move(m, dest, a.get("name"))
                elif e.op == "delete":
                    m = self._find(a["folder"], a["uidvalidity"], a["uid"])
                    if m is not None:
                        self._shown[e.seq] = self._show_delete(m, self._folder(a.get("trash")))
                elif e.op == "flags":
                    m = self._find(a["folder"], a["uidvalidity"], a["uid"])
                    if m is not None:
                        m.flags = tuple(a["flags"])
                        flags_unsaved(m)
                elif e.op == "mkdir":
                    self._show_mkdir(tuple(a["path"]), a["name"])
                elif e.op == "append":
                    folder = self._folder(a["folder"])
                    data = await trio.to_thread.run_sync(e.read_blob)  # read and hashed off the loop
                    if folder is not None and data is not None:
                        p = self.tree.uploads.new_pending(folder, a.get("name") or f"offline-{e.seq}.eml")
                        await trio.to_thread.run_sync(p.write, 0, data)
                        p.mark_clean(p.generation)
                        p.journal_seq = e.seq
                        self.tree.uploads.untrack(p)
                        folder.pending[p.name] = p
            except Exception as err:  # noqa: BLE001 - one odd entry must not stop the mount
                log.warning("offline change #%d (%s) cannot be shown: %s", e.seq, e.op, describe(err))
        if entries:
            log.info("%d offline changes from an earlier run wait for the server", len(entries))

    # -- replaying ---------------------------------------------------------------------

    async def replay(self) -> None:
        """Send every recorded change, in each folder's order, while the server answers.

        Any failure of one entry is that entry's (counted, and set aside after a few);
        it holds back only the later entries of its folders (``_Held``). Nothing raised
        here reaches the watcher, whose round syncs after the replay.
        """
        if not self.due or not self.tree.pool.available():
            return
        async with self._lock:
            try:
                await self._replay()
            except ServerUnavailable as err:
                log.info("replay paused: %s", err)
            except Exception as err:  # noqa: BLE001 - e.g. the journal cannot be read; next round
                log.error("replay of offline changes stopped: %s; it is tried again at the next round",
                          describe(err))

    @property
    def due(self) -> bool:
        """Is there anything for a replay to do (changes to send, or folders to settle)?"""
        return self.pending > 0 or bool(self._unsettled)

    async def _replay(self) -> None:
        entries = await self.disk.call(self.store.journal_pending)
        self.pending = len(entries)
        if not entries:
            if self._unsettled:
                await self._settle(set())
            return
        # Once per count: while entries wait for a folder that stalls, every round comes here.
        (log.info if len(entries) != self._announced else log.debug)("replaying %d offline changes", len(entries))
        self._announced = len(entries)
        touched: set[bytes] = set()
        held = _Held()
        for e in entries:
            for key in FOLDER_KEYS:
                if isinstance(e.args.get(key), bytes):
                    touched.add(e.args[key])
            # Settled at the next round should this replay stop before its own settle.
            self._unsettled |= touched
            folders = entry_folders(e)
            if held.holds(folders):
                held.add(folders)  # what comes later on its folders waits for it in turn
                log.debug("offline change #%d (%s) waits for an earlier change of its folders", e.seq, e.op)
                continue
            if folders is not None and any(self.tree.pool.held_back(f) for f in folders):
                held.add(folders)  # a stalled folder's back-off runs (Pool.stalls): not tried before it ends
                log.debug("offline change #%d (%s) waits for a folder that stalls", e.seq, e.op)
                continue
            self.sender.appended = None
            try:
                # Shielded: a change sent to the server is also marked done, even if
                # the mount is being torn down (else the next mount would redo it).
                with trio.CancelScope(shield=True):
                    outcome = await self.sender.apply(e)
                    await self.disk.call(self.store.journal_done, e.seq, outcome)
            except NoSuchEntry:
                # Superseded while this replay held it (the file changed again, and its
                # newer version is recorded or stored): nothing to do, or, if the APPEND
                # went through meanwhile, our copy of the older version to take back.
                await self.sender.take_back(e)
                continue
            except Skip as s:
                await self.disk.call(self.store.journal_skip, e.seq, str(s))
                self.pending -= 1
                note = f"#{e.seq} {e.op}: {s}"
                self.not_applied.append(note)
                log.warning("offline change %s was not applied", note)
                continue
            except FolderStalled as err:
                # The pool found the server answering while this folder does not: it backs
                # the folder off, and its entries wait (as below, without another probe).
                log.info("offline change #%d (%s) waits: %s", e.seq, e.op, err)
                if folders is None:
                    return
                held.add(folders)
                continue
            except ServerUnavailable as err:
                # Not the change's fault: no attempt counted; what is left stays shown.
                if folders is None or not await self.tree.pool.probe():
                    log.info("replay paused: %s", err)
                    return
                # The server answers (the probe's NOOP, on a fresh connection if need be):
                # it is this entry's folder that does not, e.g. Dovecot waiting on a stale
                # Maildir lock for minutes. Its folders wait; the others' entries go on, so
                # a round costs one time-out per such folder, not one per entry.
                log.info("offline change #%d (%s) waits: %s; the server answers, so the changes "
                         "of other folders go on", e.seq, e.op, err)
                held.add(folders)
                continue
            except Exception as err:  # noqa: BLE001 - any failure is this entry's
                try:
                    if await self._failed(e, err):
                        continue
                except NoSuchEntry:  # superseded meanwhile (its blob went with it): as above
                    await self.sender.take_back(e)
                    continue
                held.add(folders)  # keep the order: later changes of its folders may depend on this one
                continue
            self.pending -= 1
            log.info("offline change #%d (%s): %s", e.seq, e.op, outcome)
        await self._settle(touched)

    async def _failed(self, e: JournalEntry, err: BaseException) -> bool:
        """Count a failed attempt of entry *e*; set it aside at its limit. True: go on with the next.

        The server's NO or BAD may change (a full quota, a folder being renamed), so the
        later entries of its folders wait, to keep their order, up to the limit. Anything
        else (a value that can never be sent, a bug) will not get better and holds back nothing.
        An APPEND is never dropped: set aside means saved to the unsent folder (or, if even
        that fails, kept in journal-kept/ by journal_skip).
        """
        text = describe(err)
        attempts = e.attempts + 1
        await self.disk.call(self.store.journal_failed, e.seq, text)
        if e.op == "append" and attempts >= REFUSED_TRIES:
            try:
                path = await trio.to_thread.run_sync(self.sender.save_unsent, e)  # fsync: off the loop
                where = f"its bytes are saved in {path}"
            except Exception as save_err:  # noqa: BLE001 - e.g. a damaged blob: journal_skip keeps it
                where = f"its bytes could not be saved aside ({describe(save_err)}) and stay in journal-kept/"
            said = "the server refused it" if isinstance(err, CommandFailed) else "it could not be sent"
            why = f"{said} {REFUSED_TRIES} times ({text}); {where}"
            await self.disk.call(self.store.journal_skip, e.seq, why)
            self.pending -= 1
            self.not_applied.append(f"#{e.seq} append: {why}")
            log.error("offline change #%d: %s", e.seq, why)
            return True
        if attempts >= MAX_ATTEMPTS and e.op != "append":
            await self.disk.call(self.store.journal_skip, e.seq, f"failed {MAX_ATTEMPTS} times: {text}")
            self.pending -= 1
            self.not_applied.append(f"#{e.seq} {e.op}: {text}")
            log.error("offline change #%d (%s) gave up after %d attempts: %s", e.seq, e.op, MAX_ATTEMPTS, text)
            return True
        log.error("offline change #%d (%s) failed: %s; will retry", e.seq, e.op, text)
        return not isinstance(err, ImapfsError) or isinstance(err, InvalidArgument)

    async def _settle(self, touched: set[bytes]) -> None:
        """Show the server's truth again for the folders whose recorded changes are all done."""
        left = await self.disk.call(self.store.journal_pending)
        busy: set[bytes] = set()
        for e in left:
            busy |= {v for k, v in e.args.items() if k in FOLDER_KEYS and isinstance(v, bytes)}
        left_seqs = {e.seq for e in left}
        touched = touched | self._unsettled
        self._unsettled = set()
        # A file whose APPEND was replayed is on the server now: stop showing it under
        # its writer's name whatever else the journal still owes that folder (the soak
        # test found such names shown for good while another entry kept a folder busy).
        stored: set[bytes] = set()
        for f in self.tree.folders():
            for name, p in list(f.pending.items()):
                seq = p.journal_seq
                if seq is not None and seq not in left_seqs and not p.dirty:
                    del f.pending[name]
                    self.tree.notifier.entry_removed(f.inode, name)
                    if f.raw is not None:
                        stored.add(f.raw)
        # Likewise a replayed move or delete: its overlay goes, the folders are listed again.
        for f in self._take_down(left_seqs):
            if f.raw is not None:
                stored.add(f.raw)
        try:
            await self.tree.refresh_folders(force=True)
        except ImapfsError as err:
            log.info("after the replay, the folders could not be listed again yet (%s); later", err)
            self._unsettled = touched
            return
        for f in self.tree.folders():
            if f.raw in busy and f.raw in stored and f.selectable and f.state is not None:
                try:
                    await self.tree.sync(f, force=True)  # show the stored message by its real name
                except ImapfsError as e:
                    log.debug("after replay, %r: %s", f.raw, e)
            if f.raw in busy or (f.raw not in touched and not f.local):
                continue
            for name in list(f.offline_entries):
                del f.offline_entries[name]
                self.tree.notifier.entry_removed(f.inode, name)
            f.hidden.clear()
            if f.local and f.state is not None and f.state.uidvalidity == 0:
                f.state = None  # created offline: now list it for real
                f.local = False
            if f.selectable and f.raw is not None:
                if f.state is not None:
                    # A change that was not applied left its message hidden, or its flags
                    # as set here: an incremental QRESYNC sync would not bring either back,
                    # a verify (UID set and every flag) does.
                    f.state.highestmodseq = None
                    f.state.verified = False
                try:
                    await self.tree.sync(f, force=True)
                except ImapfsError as e:
                    log.debug("after replay, %r: %s", f.raw, e)

    # -- status --------------------------------------------------------------------------

    async def state_lines(self) -> list[str]:
        lines = [f"pending changes: {self.pending}"]
        try:
            hist = await self.disk.call(self.store.journal_history, 10)
        except ImapfsError:
            hist = []
        for h in hist:
            if h.status == "skipped":
                lines.append(f"not applied: #{h.seq} {h.op}: {h.outcome}")
        try:
            st = await self.disk.call(self.store.stats)
            lines.append(f"cache: {st['body_count']} messages, {st['body_bytes'] / 1e6:.1f} of "
                         f"{st['max_bytes'] / 1e6:.0f} MB")
        except ImapfsError:
            pass
        return lines


class Keeper:
    """``-o keep=``: folders kept complete on disk for offline use (and never evicted)."""

    def __init__(self, tree: Tree, paths: list[str], poll: float, raw: set[bytes] | None = None,
                 bulk: Bulk | None = None) -> None:
        self.tree = tree
        self.bulk = bulk  # batched fetches awaited into the store (issue 12)
        self.paths = [tuple(p.strip("/").split("/")) for p in paths if p.strip("/")]
        self.poll = poll
        self.raw: set[bytes] = raw if raw is not None else set()  # shared with the store's pinned()

    def pinned(self, name: bytes) -> bool:
        return name in self.raw

    def _resolve(self) -> list[Folder]:
        out = []
        for path in self.paths:
            node: Folder | None = self.tree.root
            for comp in path:
                assert node is not None  # the loop stops at None
                node = node.children.get(comp)
                if node is None:
                    break
            if node is not None and node.raw is not None and node.selectable:
                out.append(node)
                self.raw.add(node.raw)
        return out

    async def run(self) -> None:
        while True:
            if self.tree.pool.available():
                try:
                    for f in self._resolve():
                        await self.keep(f)
                except ImapfsError as e:
                    log.debug("keep: %s", e)
                except Exception:  # noqa: BLE001
                    log.exception("keep failed")
            await trio.sleep(max(5.0, self.poll))

    async def keep(self, f: Folder) -> None:
        if self.bulk is not None:
            # Reads through the tree could leave a body out (the write-behind queue skips
            # bodies when full, and one served from memory is not written again).
            await self.bulk.fill(f)
            return
        st = await self.tree.sync(f)
        if st is None:
            return
        missing = [st.msgs[u] for u in st.uids if u not in st.on_disk and u in st.msgs]
        if not missing:
            return
        t0 = time.monotonic()
        for m in missing:
            await self.tree.read(m, 0, m.size)
        log.info("keep: %s now fully on disk (%d messages in %.1f s)",
                 (f.raw or b"").decode("ascii", "replace"), len(missing), time.monotonic() - t0)
