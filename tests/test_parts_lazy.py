"""A BODYSTRUCTURE fetched with a body batch is parsed only when its ``.parts`` is listed
(issue 12, stop 17). In-process (the fake server of tests/test_inprocess.py), no FUSE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from imapfs import mime
from imapfs.parts import Parts
from tests.test_inprocess import mount, two_folders

# A multipart/mixed with a text body and a named attachment, as imapproto.parse gives it.
STRUCTURE: list[Any] = [
    [b"text", b"plain", [b"charset", b"utf-8"], None, None, b"7bit", 12, 1, None, None, None, None],
    [b"application", b"pdf", [b"name", b"Rechnung.pdf"], None, None, b"base64", 40, None,
     [b"attachment", [b"filename", b"Rechnung.pdf"]], None, None],
    b"mixed", [b"boundary", b"b1"], None, None, None,
]


def test_a_batch_structure_is_parsed_when_listed_and_stored_at_once(tmp_path: Path, monkeypatch) -> None:
    parsed: list[object] = []
    real = mime.parse_bodystructure

    def counting(value: object) -> mime.BodyPart:
        parsed.append(value)
        return real(value)

    monkeypatch.setattr(mime, "parse_bodystructure", counting)

    async def main() -> None:
        rig = await mount(two_folders(), tmp_path)
        try:
            parts = Parts(rig.tree)
            m = (await rig.msgs("INBOX"))[1]
            parts._fetched(m, {b"BODYSTRUCTURE": STRUCTURE})  # as Content calls it for each body of a batch
            assert parsed == []  # reading the body alone parses nothing
            root = await parts._root(m)
            assert parsed == [STRUCTURE]
            assert [(e.section, e.name, e.kind) for e in mime.list_entries(root)] == [
                ("1", "1-body.txt", "text"), ("2", "2-Rechnung.pdf", "binary")]
            assert await parts._root(m) is root and len(parsed) == 1  # parsed once
            assert rig.disk is not None
            await rig.disk.flush()  # stored for offline listings as before, unparsed
            saved = await rig.disk.call(rig.disk.store.get_structure, b"INBOX", m.uidvalidity, m.uid)
            assert saved == repr(STRUCTURE).encode("ascii")
            other = (await rig.msgs("INBOX"))[2]
            parts._fetched(other, {b"BODYSTRUCTURE": b"not a structure"})
            assert other.inode not in parts._structs  # left for _root to ask the server
        finally:
            await rig.close()

    trio.run(main)


def _with_attachment(size: int) -> tuple[bytes, list[Any]]:
    """A message with a base64 attachment of about *size* bytes, and its BODYSTRUCTURE."""
    text = b"hello there\r\n"
    b64 = (b"QUJD" * 19 + b"\r\n") * (size // 78)
    msg = (b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
           + text + b"\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + b64 + b"\r\n--b1--\r\n")
    structure: list[Any] = [
        [b"text", b"plain", None, None, None, b"7bit", len(text), 1, None, None, None, None],
        [b"application", b"pdf", None, None, None, b"base64", len(b64), None, None, None, None],
        b"mixed", [b"boundary", b"b1"], None, None, None,
    ]
    return msg, structure


def test_listing_the_parts_of_a_message_below_the_scan_limit_stays_on_the_loop(tmp_path: Path, monkeypatch) -> None:
    """Cutting a message and sizing its attachment are C scans: up to parts.SMALL_SCAN they
    run on the trio loop, where they cost less than a worker hand-off (stop 18); above, in a
    worker, so a listing never holds the loop for long. Names and sizes are the same."""
    from imapfs import parts as parts_module
    from tests.support.fake_imap import FakeServer

    handed: list[str] = []
    real = trio.to_thread.run_sync

    async def counting(fn: Any, *a: Any, **k: Any) -> Any:
        handed.append(getattr(getattr(fn, "func", fn), "__name__", "?"))
        return await real(fn, *a, **k)

    async def main() -> None:
        server = FakeServer(folders=["INBOX"])
        small, small_bs = _with_attachment(200 * 1024)  # an attachment of a typical size
        big, big_bs = _with_attachment(parts_module.SMALL_SCAN + 4096)
        uids = [server.deliver("INBOX", small), server.deliver("INBOX", big)]
        rig = await mount(server, tmp_path, cache=False)
        try:
            parts = Parts(rig.tree)
            msgs = await rig.msgs("INBOX")
            monkeypatch.setattr(parts_module.trio.to_thread, "run_sync", counting)
            listed = []
            for uid, body, bs in zip(uids, (small, big), (small_bs, big_bs)):
                m = msgs[uid]
                rig.tree.content.put((m.inode, 0), body)  # read already, as grep reads the .eml first
                parts._fetched(m, {b"BODYSTRUCTURE": bs})
                handed.clear()
                entries = await parts.listing(parts.dir_for(m))
                listed.append((list(handed), [(name, node.size) for _c, name, node in entries]))
            assert listed[0][0] == []  # on the loop
            assert {"split_sections", "decoded_size"} <= set(listed[1][0])  # in a worker
            for (_h, entries), bs in zip(listed, (small_bs, big_bs)):
                assert [size for _n, size in entries] == [bs[0][6], bs[1][6] // 78 * 57]
        finally:
            await rig.close()

    trio.run(main)
