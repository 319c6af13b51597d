"""Unity Catalog volumes through the Files API, with the real databricks-sdk over HTTP."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import AlreadyExists, BadRequest, DatabricksError, NotFound

from databricks_emulator import DatabricksEmulator, run_emulator

VOL = "/Volumes/main/raw/landing"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[DatabricksEmulator]:
    with run_emulator(root=tmp_path / "emu", volumes=["main.raw.landing"]) as emulator:
        yield emulator


@pytest.fixture
def ws(emu: DatabricksEmulator) -> WorkspaceClient:
    return WorkspaceClient(host=emu.host, token=emu.token)


def raw(
    emu: DatabricksEmulator, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{emu.host}{path}",
        method=method,
        headers={"Authorization": f"Bearer {emu.token}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_upload_download_metadata_delete(emu: DatabricksEmulator, ws: WorkspaceClient) -> None:
    ws.files.upload(f"{VOL}/in/a/hello.txt", io.BytesIO(b"hello volume"))  # parents created
    assert (emu.volumes.root / "main/raw/landing/in/a/hello.txt").read_bytes() == b"hello volume"

    download = ws.files.download(f"{VOL}/in/a/hello.txt")
    assert download.contents is not None and download.last_modified is not None
    assert download.contents.read() == b"hello volume"
    assert download.content_length == 12 and download.content_type == "application/octet-stream"
    assert download.last_modified.endswith("GMT")

    meta = ws.files.get_metadata(f"{VOL}/in/a/hello.txt")
    assert (meta.content_length, meta.content_type) == (12, "application/octet-stream")
    assert meta.last_modified == download.last_modified

    # overwrite defaults to true; overwrite=False on an existing file is 409 ALREADY_EXISTS.
    ws.files.upload(f"{VOL}/in/a/hello.txt", io.BytesIO(b"again"))
    with pytest.raises(AlreadyExists) as exists:
        ws.files.upload(f"{VOL}/in/a/hello.txt", io.BytesIO(b"no"), overwrite=False)
    assert exists.value.error_code == "ALREADY_EXISTS"
    assert str(exists.value) == "The file being created already exists."
    contents = ws.files.download(f"{VOL}/in/a/hello.txt").contents
    assert contents is not None and contents.read() == b"again"

    ws.files.delete(f"{VOL}/in/a/hello.txt")
    for call in (
        lambda: ws.files.download(f"{VOL}/in/a/hello.txt"),
        lambda: ws.files.delete(f"{VOL}/in/a/hello.txt"),
    ):
        with pytest.raises(NotFound) as missing:
            call()
        assert missing.value.error_code == "NOT_FOUND"
        assert str(missing.value) == "The file being accessed is not found."
    with pytest.raises(NotFound):  # HEAD: the status says it (no body)
        ws.files.get_metadata(f"{VOL}/in/a/hello.txt")


def test_download_range_and_head_on_the_wire(emu: DatabricksEmulator, ws: WorkspaceClient) -> None:
    ws.files.upload(f"{VOL}/r.bin", io.BytesIO(b"0123456789"))
    status, headers, body = raw(emu, "GET", f"/api/2.0/fs/files{VOL}/r.bin", {"Range": "bytes=3-"})
    assert (status, body, headers["Content-Range"]) == (206, b"3456789", "bytes 3-9/10")
    status, headers, body = raw(emu, "HEAD", f"/api/2.0/fs/files{VOL}/r.bin")
    assert (status, body, headers["Content-Length"]) == (200, b"", "10")
    status, _, body = raw(emu, "HEAD", f"/api/2.0/fs/files{VOL}/nope")
    assert (status, body) == (404, b"")


def test_directories_create_list_paging_delete(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    ws.files.create_directory(f"{VOL}/d/e/f")  # parents too
    ws.files.create_directory(f"{VOL}/d/e/f")  # idempotent
    ws.files.get_directory_metadata(f"{VOL}/d/e/f")
    for i in range(5):
        ws.files.upload(f"{VOL}/d/file{i}.txt", io.BytesIO(b"x" * i))

    entries = list(ws.files.list_directory_contents(f"{VOL}/d", page_size=2))
    assert [e.name for e in entries] == [
        "e",
        "file0.txt",
        "file1.txt",
        "file2.txt",
        "file3.txt",
        "file4.txt",
    ]
    first = entries[0]
    assert (first.is_directory, first.path) == (True, f"{VOL}/d/e/")
    assert (entries[3].path, entries[3].file_size, entries[3].is_directory) == (
        f"{VOL}/d/file2.txt",
        2,
        False,
    )
    assert entries[3].last_modified is not None and entries[3].last_modified > 0

    # The wire format: pages of page_size entries and a next_page_token.
    status, _, body = raw(emu, "GET", f"/api/2.0/fs/directories{VOL}/d?page_size=4")
    page = json.loads(body)
    assert status == 200 and len(page["contents"]) == 4 and page["next_page_token"]
    # An empty directory lists nothing.
    assert list(ws.files.list_directory_contents(f"{VOL}/d/e/f")) == []

    with pytest.raises(BadRequest) as not_empty:
        ws.files.delete_directory(f"{VOL}/d/e")
    assert not_empty.value.error_code == "INVALID_PARAMETER_VALUE"
    assert not_empty.value.details[0].reason == "FILES_API_DIRECTORY_IS_NOT_EMPTY"
    ws.files.delete_directory(f"{VOL}/d/e/f")
    ws.files.delete_directory(f"{VOL}/d/e")
    with pytest.raises(NotFound):  # HEAD: no body, the status says it
        ws.files.get_directory_metadata(f"{VOL}/d/e")
    with pytest.raises(NotFound) as gone_list:
        list(ws.files.list_directory_contents(f"{VOL}/d/e"))
    assert str(gone_list.value) == "The directory being accessed is not found."

    # A file in the way of a directory (and the other way round) is a 409.
    with pytest.raises(DatabricksError) as in_the_way:
        ws.files.create_directory(f"{VOL}/d/file1.txt/sub")
    assert in_the_way.value.error_code == "ALREADY_EXISTS"


def test_paths_outside_volumes_and_undeclared_volumes(ws: WorkspaceClient) -> None:
    for path in ("/tmp/x.txt", "/Volumes/main/raw", "/dbfs/x"):
        with pytest.raises(BadRequest) as bad:
            ws.files.upload(path, io.BytesIO(b"x"))
        assert bad.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(NotFound) as missing:
        ws.files.upload("/Volumes/main/raw/other/x.txt", io.BytesIO(b"x"))
    assert str(missing.value) == "Volume 'main.raw.other' does not exist."
    with pytest.raises(NotFound):
        list(ws.files.list_directory_contents("/Volumes/nope/raw/landing"))


def test_volumes_are_declared_through_the_admin_api_and_the_cli_config(
    emu: DatabricksEmulator, ws: WorkspaceClient, tmp_path: Path
) -> None:
    def admin(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{emu.host}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {emu.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    assert admin("POST", "/emulator/volumes", {"name": "dev.bronze.files"})["volumes"] == [
        "dev.bronze.files",
        "main.raw.landing",
    ]
    ws.files.upload("/Volumes/dev/bronze/files/a.csv", io.BytesIO(b"a,b\n"))
    with pytest.raises(urllib.error.HTTPError) as bad:
        admin("POST", "/emulator/volumes", {"name": "not-three-parts"})
    assert bad.value.code == 400

    from databricks_emulator.__main__ import parse_args
    from databricks_emulator.emulator import load_volume_config

    config = tmp_path / "ws.json"
    config.write_text(json.dumps({"volumes": ["main.raw.a"]}))
    args = parse_args(["--cluster-config", str(config), "--volume", "main.raw.b"])
    assert [*load_volume_config(args.cluster_config), *args.volume] == ["main.raw.a", "main.raw.b"]
