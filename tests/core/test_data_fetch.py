"""`latentspace data fetch` against a local HTTP server: success, checksum mismatch, unreachable server."""

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from latentspace.core import data
from latentspace.core.errors import DataError

REPO, COMMIT = "someone/somedata", "0" * 40


def _spec(files: dict[str, bytes]) -> dict:
    return {"repo": REPO, "commit": COMMIT, "notices": {"LICENSE": "MIT\r\n"},
            "files": [{"path": f"part/{name}", "source": f"data/{name}", "size": len(body),
                       "sha256": hashlib.sha256(body).hexdigest()} for name, body in files.items()]}


@pytest.fixture
def server(tmp_path):
    """A local HTTP server laid out as `<root>/<repo>/<commit>/<source>`, like raw.githubusercontent.com."""
    root = tmp_path / "www"
    (root / REPO / COMMIT / "data").mkdir(parents=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root / REPO / COMMIT / "data", f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_downloads_checks_and_installs_atomically(server, tmp_path):
    folder, url = server
    files = {"a.txt": b"alpha\n", "b.jsonl": b'{"x": 1}\n'}
    for name, body in files.items():
        (folder / name).write_bytes(body)
    seen = []
    path = data.fetch("toy", tmp_path / "dest", mirror=url, spec=_spec(files),
                      progress=lambda done, total, name: seen.append((done, total)))
    assert path == tmp_path / "dest" / "toy"
    assert (path / "part" / "a.txt").read_bytes() == b"alpha\n" and (path / "part" / "b.jsonl").exists()
    assert (path / "LICENSE").read_bytes() == b"MIT\r\n" and (path / "NOTICE.md").exists()
    assert not (tmp_path / "dest" / ".partial-toy").exists() and seen[-1] == (2, 2)
    # present: not fetched again (the server's copy changed, the installed one did not)
    (folder / "a.txt").write_bytes(b"changed\n")
    assert data.fetch("toy", tmp_path / "dest", mirror=url, spec=_spec(files)) == path
    assert (path / "part" / "a.txt").read_bytes() == b"alpha\n"


def test_checksum_mismatch_is_clear_and_installs_nothing(server, tmp_path):
    folder, url = server
    files = {"a.txt": b"alpha\n", "b.txt": b"beta\n"}
    (folder / "a.txt").write_bytes(b"alpha\n")
    (folder / "b.txt").write_bytes(b"tampered\n")
    with pytest.raises(DataError, match=r"part/b.txt .* failed its checksum"):
        data.fetch("toy", tmp_path / "dest", mirror=url, spec=_spec(files))
    assert not (tmp_path / "dest" / "toy").exists()
    partial = tmp_path / "dest" / ".partial-toy"
    assert not (partial / "part" / "b.txt").exists()  # the bad file is deleted, not left half-written
    assert [p.name for p in (partial / "part").iterdir()] == ["a.txt"]  # the verified one is kept for a retry
    (folder / "b.txt").write_bytes(b"beta\n")
    path = data.fetch("toy", tmp_path / "dest", mirror=url, spec=_spec(files))
    assert (path / "part" / "b.txt").read_bytes() == b"beta\n"


def test_unreachable_server_is_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="cannot download http://127.0.0.1.*check the network"):
        data.fetch("toy", tmp_path / "dest", mirror=f"http://127.0.0.1:{port}", spec=_spec({"a.txt": b"a"}))
    assert not (tmp_path / "dest" / "toy").exists()


def test_manifest_pins_every_file():
    for name, spec in data.manifest().items():
        assert len(spec["commit"]) == 40 and spec["files"], name
        for entry in spec["files"]:
            assert len(entry["sha256"]) == 64 and entry["size"] > 0 and not entry["source"].startswith("/")
        url = data.file_url(spec, spec["files"][0]["source"])
        assert url.startswith(f"https://raw.githubusercontent.com/{spec['repo']}/{spec['commit']}/")


def test_samples_are_unchanged_copies_of_the_pinned_files():
    """Each embedded sample file that claims to be unchanged has the manifest's checksum."""
    for name, spec in data.manifest().items():
        by_path = {f["path"]: f["sha256"] for f in spec["files"]}
        for local in spec["sample"]["files"]:
            body = (data.SAMPLES_DIR / name / local).read_bytes()
            assert hashlib.sha256(body).hexdigest() == by_path[local], (name, local)
        if data.sample_path(name):
            assert (data.SAMPLES_DIR / name / "NOTICE.md").exists()


def test_cli_fetch_unknown_name_and_unreachable(tmp_path):
    run = [sys.executable, "-m", "latentspace.cli", "data", "fetch"]
    result = subprocess.run([*run, "nosuch", "--dest", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown data set" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([*run, "gsm8k", "--dest", str(tmp_path), "--mirror", "http://127.0.0.1:9", "-q"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "cannot download" in result.stderr and "Traceback" not in result.stderr
    assert not (Path(tmp_path) / "gsm8k").exists()
    assert json.loads(subprocess.run([sys.executable, "-m", "latentspace.cli", "data", "--json"], capture_output=True,
                                     text=True, timeout=300).stdout)
