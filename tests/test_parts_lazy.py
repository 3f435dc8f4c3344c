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
