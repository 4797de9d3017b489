"""``leukoedge serve`` as a real process on a loopback port: many concurrent clients each
get exactly their own answers; hostile requests are refused while the server stays up; a
request in flight makes the next one over the limit 429, and SIGTERM lets it finish, then
exits 0; a public bind needs the token."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from leukoedge.cli import assemble  # noqa: E402

BOUNDARY = "livetestboundary"


class Served:
    """``python -m leukoedge serve ... --port 0`` until ``stop()``; ``port`` from its note."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "leukoedge", "serve", "--port", "0",
                                      *args], stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise AssertionError("server did not start: " + "".join(self.lines))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._reader.join(10)
        return code


def multipart(items: list[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    for name, data in items:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/bmp\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def head(port: int, length: int | str, host: str | None = None, extra: str = "") -> bytes:
    return (f"POST /v1/classify HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any] | str]:
    """Status and JSON body of one response on a raw socket (Content-Length framing)."""
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    body = f.read(length)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


def raw(port: int, data: bytes) -> tuple[int, dict[str, Any] | str]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        return read_response(s)


def post(port: int, items: list[tuple[str, bytes]], headers: dict[str, str] | None = None,
         conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/classify", body=multipart(items),
              headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                       **(headers or {})})
    r = c.getresponse()
    body = json.loads(r.read())
    if conn is None:
        c.close()
    return r.status, body


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, text


@pytest.fixture(scope="module")
def cells(shared_cells: Path) -> list[Path]:
    return sorted(shared_cells.rglob("*.bmp"))


@pytest.fixture(scope="module")
def split_model(model_dir: Path, cells: list[Path]) -> Path:
    from onnx_models import mean_brightness_model, save

    from leukoedge.preprocess import preprocess

    means = [float(preprocess(p, 32).mean()) for p in cells]
    return save(mean_brightness_model(32, centre=float(np.median(means)), scale=1.0),
                model_dir / "split-live.onnx")


@pytest.fixture(scope="module")
def reference(cells: list[Path], split_model: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    r = CliRunner().invoke(assemble(), ["classify", *map(str, cells), "--model",
                                        str(split_model), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["label"] for row in rows} == {"all", "hem"}
    return {Path(row["path"]).name: row for row in rows}


@pytest.fixture(scope="module")
def server(split_model: Path) -> Iterator[Served]:
    s = Served("--model", str(split_model), "--max-concurrent", "48", "--max-images", "20",
               "--max-request-mb", "8")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def test_concurrent_clients_each_get_their_own_answers(
        server: Served, cells: list[Path], reference: dict[str, dict[str, Any]]) -> None:
    data = {p.name: p.read_bytes() for p in cells}
    names = sorted(data)
    problems: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            for r in range(4):
                picked = [names[(k * 7 + r * 3 + j) % len(names)] for j in range(1 + (k + r) % 3)]
                sent = [(f"c{k}-r{r}-{j}-{n}", data[n]) for j, n in enumerate(picked)]
                status, body = post(server.port, sent, conn=conn)
                if status != 200:
                    problems.append(f"client {k}: status {status} {body}")
                    continue
                got = body["results"]
                if [g["name"] for g in got] != [name for name, _ in sent]:
                    problems.append(f"client {k}: names {[g['name'] for g in got]}")
                    continue
                for g, n in zip(got, picked):
                    ref = reference[n]
                    if g["label"] != ref["label"] or abs(g["prob_all"] - ref["prob_all"]) > 1e-6:
                        problems.append(f"client {k}: {g} vs {ref}")
                with lock:
                    answered[0] += len(got)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert answered[0] == sum(1 + (k + r) % 3 for k in range(32) for r in range(4))
    status, metrics = get(server.port, "/metrics")
    sizes = re.search(r"leukoedge_batch_size_count (\d+)", metrics)
    assert sizes is not None and int(sizes.group(1)) >= 1


def test_hostile_requests_are_refused_and_the_server_stays_up(
        server: Served, cells: list[Path]) -> None:
    port = server.port
    cell = cells[0].read_bytes()
    # a huge declared length: refused from the header, nothing read
    status, body = raw(port, head(port, 10**12))
    assert status == 413
    # truncated multipart (the length matches what is sent, the closing boundary is missing)
    cut = multipart([("a.bmp", cell)])[:-300]
    status, body = raw(port, head(port, len(cut)) + cut)
    assert status == 400 and "incomplete" in body["error"]  # type: ignore[index]
    # a body that stops half way and a client that goes away
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        full = multipart([("a.bmp", cell)])
        s.sendall(head(port, len(full)) + full[: len(full) // 2])
    # 10,000 tiny parts
    many = multipart([(f"{i}.bmp", b"x") for i in range(10_000)])
    status, body = raw(port, head(port, len(many)) + many)
    assert status == 413 and "too many images" in body["error"]  # type: ignore[index]
    # a body over the request limit (8 MiB)
    big = multipart([(f"{i}.bmp", cell) for i in range(15)])
    status, body = raw(port, head(port, len(big)) + big)
    assert status == 413
    # non-image bytes and a path-like name: error entry / name only, 200
    status, body = post(port, [("../../../etc/passwd", b"root:x:0:0"),
                               ("/tmp/../UID_H9_1_1_hem.bmp", cell)])
    assert status == 200
    res = body["results"]
    assert res[0]["name"] == "passwd" and "not a readable image" in res[0]["error"]
    assert res[1]["name"] == "UID_H9_1_1_hem.bmp" and res[1]["patient"] == "UID_H9"
    assert res[1]["error"] is None
    # a wrong Host (DNS rebinding) is refused
    body_ok = multipart([("a.bmp", cell)])
    status, body = raw(port, head(port, len(body_ok), host=f"evil.example:{port}") + body_ok)
    assert status == 400 and "Host" in body["error"]  # type: ignore[index]
    # a bad Content-Length
    status, _ = raw(port, head(port, "12x") + b"x")
    assert status == 400
    # still up and answering
    status, body = post(port, [("ok.bmp", cell)])
    assert status == 200 and body["results"][0]["error"] is None
    assert get(port, "/healthz")[0] == 200
    assert server.proc.poll() is None


def test_limit_429_then_sigterm_drains_the_request_in_flight_and_exits_0(
        split_model: Path, cells: list[Path]) -> None:
    s = Served("--model", str(split_model), "--max-concurrent", "1")
    try:
        full = multipart([(cells[0].name, cells[0].read_bytes())])
        first = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        first.sendall(head(s.port, len(full)) + full[:1000])  # in flight: body still coming
        deadline = time.monotonic() + 60
        while "leukoedge_requests_in_flight 1" not in get(s.port, "/metrics")[1]:
            assert time.monotonic() < deadline, "the first request never got in flight"
            time.sleep(0.05)
        status, body = post(s.port, [("b.bmp", cells[1].read_bytes())])
        assert status == 429 and "too many requests" in body["error"]
        s.proc.send_signal(signal.SIGTERM)
        while True:  # the server stops accepting new connections...
            assert time.monotonic() < deadline, "the server kept accepting connections"
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
            except OSError:
                break
            time.sleep(0.05)
        first.sendall(full[1000:])  # ...but the request in flight is still answered
        status, body = read_response(first)
        first.close()
        assert status == 200
        assert body["results"][0]["name"] == cells[0].name  # type: ignore[index]
        assert body["results"][0]["error"] is None  # type: ignore[index]
        assert s.proc.wait(60) == 0
        s.stop()  # joins the reader: every line the server wrote is in s.lines now
        assert "stopped by SIGTERM" in "".join(s.lines), "".join(s.lines)
    finally:
        s.stop()


def test_public_bind_requires_the_token(split_model: Path, cells: list[Path],
                                        tmp_path: Path) -> None:
    token = "t0ken-for-the-live-test-0123456789"
    tf = tmp_path / "token.txt"
    tf.write_text(token + "\n")
    os.chmod(tf, 0o600)
    s = Served("--model", str(split_model), "--host", "0.0.0.0", "--token-file", str(tf))
    try:
        assert "TLS belongs to a reverse proxy" in "".join(s.lines)  # printed before the URL
        item = [(cells[0].name, cells[0].read_bytes())]
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
                        {"Authorization": token}):
            status, body = post(s.port, item, headers)
            assert status == 401, headers
        status, body = post(s.port, item, {"Authorization": f"Bearer {token}"})
        assert status == 200 and body["results"][0]["error"] is None
        assert get(s.port, "/v1/model")[0] == 401
        assert get(s.port, "/v1/model", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        assert s.stop() == 0
