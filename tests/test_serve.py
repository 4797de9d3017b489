"""``leukoedge serve`` through the framework's test client: answers equal ``classify``,
bad images are error entries, limits give 413/400/415, Host and token checks, metrics,
no spooling to disk, and the batcher's bookkeeping."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from leukoedge.cli import assemble  # noqa: E402
from leukoedge.errors import RequestError  # noqa: E402
from leukoedge.serve.app import Limits, Settings, create_app  # noqa: E402
from leukoedge.serve.batcher import Batcher  # noqa: E402
from leukoedge.serve.multipart import parse  # noqa: E402
from leukoedge.serve.security import allowed_hosts  # noqa: E402
from leukoedge.session import load_model  # noqa: E402

BASE = "http://127.0.0.1:8000"


def cells_of(shared_cells: Path) -> list[Path]:
    cells = sorted(shared_cells.rglob("*.bmp"))
    assert len(cells) == 43
    return cells


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/bmp")) for p in paths]


@pytest.fixture(scope="module")
def split_model(model_dir: Path, shared_cells: Path) -> Path:
    """The mean-brightness model with its centre at the median of the real cells, so that
    both labels occur (and some cells lie near the threshold)."""
    from onnx_models import mean_brightness_model, save

    from leukoedge.preprocess import preprocess

    means = [float(preprocess(p, 32).mean()) for p in cells_of(shared_cells)]
    return save(mean_brightness_model(32, centre=float(np.median(means)), scale=1.0),
                model_dir / "split.onnx")


@pytest.fixture()
def client(split_model: Path) -> Iterator[TestClient]:
    app = create_app(load_model(split_model),
                     Settings(hosts=allowed_hosts("127.0.0.1", 8000),
                              limits=Limits(max_request_bytes=4 * 1024 * 1024, max_images=50)))
    with TestClient(app, base_url=BASE) as c:
        yield c


def classify_rows(cells: list[Path], model: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "ref.jsonl"
    r = CliRunner().invoke(assemble(), ["classify", *map(str, cells), "--model", str(model),
                                        "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(row["path"]).name: row for row in rows}


def assert_same(served: dict[str, Any], ref: dict[str, Any]) -> None:
    assert served["label"] == ref["label"]
    assert served["patient"] == ref["patient"]
    assert served["error"] is None and ref["error"] is None
    assert abs(served["prob_all"] - ref["prob_all"]) <= 1e-6
    assert abs(served["logit"] - ref["logit"]) <= 1e-5


def test_answers_equal_classify_one_and_many_per_request(
        client: TestClient, shared_cells: Path, split_model: Path, tmp_path: Path) -> None:
    cells = cells_of(shared_cells)
    ref = classify_rows(cells, split_model, tmp_path)
    assert {r["label"] for r in ref.values()} == {"all", "hem"}  # both labels are exercised
    results = []
    for i in range(0, len(cells), 6):  # 6 cells (3.6 MB) per request: under the 4 MiB limit
        r = client.post("/v1/classify", files=files(cells[i:i + 6]))
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    assert [x["name"] for x in results] == [p.name for p in cells]  # request order
    assert set(results[0]) == {"name", "patient", "prob_all", "label", "error", "logit",
                               "heatmap", "drift"}
    for x in results:
        assert_same(x, ref[x["name"]])
    for p in cells[:5]:
        (one,) = client.post("/v1/classify", files=files([p])).json()["results"]
        assert one["name"] == p.name
        assert_same(one, ref[p.name])


def test_bad_images_are_error_entries_not_failures(client: TestClient,
                                                   shared_cells: Path) -> None:
    good = cells_of(shared_cells)[0]
    data = good.read_bytes()
    parts = [("image", ("junk.bmp", b"this is not an image", "image/bmp")),
             ("image", ("empty.png", b"", "image/png")),
             ("image", ("cut.bmp", data[: len(data) // 3], "image/bmp")),
             ("image", (good.name, data, "image/bmp"))]
    r = client.post("/v1/classify", files=parts)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["junk.bmp", "empty.png", "cut.bmp", good.name]
    for x in res[:3]:
        assert x["error"] and x["name"] in x["error"]
        assert x["prob_all"] is None and x["label"] is None and x["logit"] is None
    assert res[3]["error"] is None and res[3]["label"] in ("all", "hem")


def test_path_like_file_names_are_only_names(client: TestClient, shared_cells: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    data = cells_of(shared_cells)[0].read_bytes()
    names = ["../../etc/UID_7_1_1_all.bmp", "..\\..\\UID_H3_1_1_hem.bmp", "/abs/..", "a\tb.bmp"]
    body, ctype = _multipart([(n, data) for n in names])  # raw: httpx would %-encode the tab
    r = client.post("/v1/classify", content=body, headers={"content-type": ctype})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["UID_7_1_1_all.bmp", "UID_H3_1_1_hem.bmp", "image-3",
                                        "a\\x09b.bmp"]
    assert [x["patient"] for x in res[:2]] == ["UID_7", "UID_H3"]
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere we can see


def test_limits_answer_413_400_415_and_the_server_stays_up(client: TestClient,
                                                          shared_cells: Path) -> None:
    cell = cells_of(shared_cells)[0]
    tiny = ("image", ("t.bmp", b"x", "image/bmp"))
    # more images than allowed (50)
    r = client.post("/v1/classify", files=[tiny] * 51)
    assert r.status_code == 413 and "too many images" in r.json()["error"]
    # 10,000 tiny parts, as files and as plain fields
    r = client.post("/v1/classify", files=[tiny] * 10_000)
    assert r.status_code == 413
    r = client.post("/v1/classify", data={f"f{i}": "x" for i in range(10_000)},
                    files=[("image", (cell.name, cell.read_bytes(), "image/bmp"))])
    assert r.status_code == 400 and "too many form fields" in r.json()["error"]
    # a huge declared length is refused before reading
    r = client.post("/v1/classify", content=b"--x--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=x",
                             "content-length": str(10**12)})
    assert r.status_code == 413
    # a body over the limit without a declared length (chunked)
    def chunks() -> Iterator[bytes]:
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
        for _ in range(5):
            yield b"\0" * (1024 * 1024)
    r = client.post("/v1/classify", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    # truncated multipart: cut before the closing boundary
    body, ctype = _multipart([(cell.name, cell.read_bytes())])
    r = client.post("/v1/classify", content=body[:-200], headers={"content-type": ctype})
    assert r.status_code == 400 and "incomplete" in r.json()["error"]
    r = client.post("/v1/classify", content=b"garbage", headers={"content-type": ctype})
    assert r.status_code == 400
    r = client.post("/v1/classify", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    only_field = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--x--\r\n'
    r = client.post("/v1/classify", content=only_field,
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "no image" in r.json()["error"]
    # still serving
    r = client.post("/v1/classify", files=files([cell]))
    assert r.status_code == 200 and r.json()["results"][0]["error"] is None
    metrics = client.get("/metrics").text
    assert 'leukoedge_requests_total{status="413"} 4' in metrics
    assert 'leukoedge_requests_total{status="200"} 1' in metrics


def _multipart(items: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "leukoedgetestboundary"
    out = bytearray()
    for name, data in items:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/bmp\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def test_a_trickled_body_is_refused_with_408(split_model: Path) -> None:
    """A client whose body stops coming gets 408 instead of holding a request slot for
    ever (called at the ASGI level: the test client sends whole bodies)."""
    import asyncio

    app = create_app(load_model(split_model),
                     Settings(hosts=None, limits=Limits(body_seconds=0.2)))
    sent: list[dict[str, Any]] = []

    async def go() -> None:
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"--x\r\n", "more_body": True}
            await asyncio.sleep(3600)  # the rest never comes
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/classify",
                 "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1:8000"),
                             (b"content-type", b"multipart/form-data; boundary=x"),
                             (b"content-length", b"1000")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        await asyncio.wait_for(app(scope, receive, send), 60)

    asyncio.run(go())
    assert sent[0]["status"] == 408
    assert b"did not arrive" in sent[1]["body"]


def test_pixel_cap_is_the_classify_cap(client: TestClient) -> None:
    """A decompression bomb (a PNG header claiming 10000x5000) is an error entry."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 5000, 8, 2, 0,
                                                             0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    r = client.post("/v1/classify", files=[("image", ("bomb.png", png, "image/png"))])
    assert r.status_code == 200
    (row,) = r.json()["results"]
    assert "too large" in row["error"] and "40000000" in row["error"]


def test_uploads_are_never_written_to_disk(tiny_model: Path, shared_cells: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way the stdlib makes a temporary file fails during the request; a 3 MB request
    (over Starlette's 1 MiB spool threshold) is still answered. The trap is shown to work
    on Starlette's own form parser."""
    import io

    from PIL import Image
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    big = io.BytesIO()
    Image.new("RGB", (1000, 1000), (90, 40, 120)).save(big, format="BMP")  # 3 MB, one part
    cells = [("image", ("big.bmp", big.getvalue(), "image/bmp")),
             *files(cells_of(shared_cells)[:2])]
    app = create_app(load_model(tiny_model), Settings(hosts=None))

    async def form(request: Request) -> PlainTextResponse:
        f = await request.form()
        return PlainTextResponse(str(len(f)))

    control = Starlette(routes=[Route("/", form, methods=["POST"])])
    with TestClient(app, base_url=BASE) as c, TestClient(control) as cc:
        def trap(*a: object, **k: object) -> None:
            raise AssertionError("a temporary file was created")

        for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
            monkeypatch.setattr(tempfile, name, trap)
        monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", trap)
        r = c.post("/v1/classify", files=cells)
        assert r.status_code == 200
        assert [x["error"] for x in r.json()["results"]] == [None, None, None]
        with pytest.raises(AssertionError, match="temporary file"):
            cc.post("/", files=cells)


def test_host_header_is_checked(client: TestClient, shared_cells: Path) -> None:
    cell = cells_of(shared_cells)[:1]
    for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8000", "127.0.0.1.nip.io:8000", "127.0.0.1:9999", ""):
        r = client.post("/v1/classify", files=files(cell), headers={"host": host})
        assert r.status_code == 400, host
        assert "Host" in r.json()["error"]


def test_token_is_required_when_set(tiny_model: Path, shared_cells: Path) -> None:
    token = "s3cret-token-of-some-length"
    app = create_app(load_model(tiny_model), Settings(hosts=None, token=token))
    cell = cells_of(shared_cells)[:1]
    with TestClient(app, base_url=BASE) as c:
        for headers in ({}, {"authorization": "Bearer wrong-token-of-some-length"},
                        {"authorization": f"Basic {token}"}, {"authorization": "Bearer "},
                        {"authorization": f"Bearer {token}x"}):
            r = c.post("/v1/classify", files=files(cell), headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/metrics", headers=headers).status_code == 401
        ok = {"authorization": f"Bearer {token}"}
        assert c.post("/v1/classify", files=files(cell), headers=ok).status_code == 200
        assert c.get("/v1/model", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness needs no token


def test_model_metrics_openapi_and_no_cdn_page(client: TestClient, shared_cells: Path,
                                               split_model: Path) -> None:
    info = client.get("/v1/model").json()
    assert info["model"] == split_model.name and info["provider"] == "cpu"
    assert info["spec"]["input_size"] == 32 and info["batching"]["max_batch"] == 32
    assert info["limits"]["max_images"] == 50
    bad = [("image", ("junk.bmp", b"junk", "image/bmp"))]
    client.post("/v1/classify", files=files(cells_of(shared_cells)[:3]) + bad)
    m = client.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert "leukoedge_images_total 4" in text
    assert "leukoedge_image_errors_total 1" in text
    assert 'leukoedge_request_seconds_bucket{le="+Inf"} 1' in text
    assert "leukoedge_batch_size_count" in text
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/classify", "/v1/patients", "/v1/model", "/healthz",
                                 "/metrics"}
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"][
        "content"]
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(page).status_code == 404


def test_parser_refuses_what_it_must() -> None:
    body, ctype = _multipart([("a.bmp", b"123"), ("b.bmp", b"456")])
    parts = parse(body, ctype, max_images=2)
    assert [(p.filename, bytes(p.data)) for p in parts] == [("a.bmp", b"123"), ("b.bmp", b"456")]
    for cut in (len(body) - 5, len(body) // 2, 3):
        with pytest.raises(RequestError) as e:
            parse(body[:cut], ctype, max_images=2)
        assert e.value.status == 400
    with pytest.raises(RequestError) as e:
        parse(body, ctype, max_images=1)
    assert e.value.status == 413
    with pytest.raises(RequestError) as e:
        parse(body, "multipart/form-data", max_images=5)
    assert e.value.status == 400


def test_batcher_gives_each_image_its_own_logit(tiny_model: Path) -> None:
    """Images queued before the thread starts are run as full batches; every future gets
    the logit of its own image (the model: logit = (mean pixel - 40) * 0.2)."""
    model = load_model(tiny_model)
    sizes: list[int] = []
    b = Batcher(model, max_batch=8, max_wait=0.5, on_batch=lambda n, s: sizes.append(n))
    values = list(range(0, 250, 10))  # 25 images, each one flat grey level
    futs = [b.submit(np.full((32, 32, 3), v, dtype=np.uint8)) for v in values]
    b.start()
    got = [f.result(timeout=60).logit for f in futs]
    b.close()
    assert sizes == [8, 8, 8, 1]
    np.testing.assert_allclose(got, [(v - 40) * 0.2 for v in values], rtol=1e-6, atol=1e-5)
    assert b.submit(np.zeros((32, 32, 3), dtype=np.uint8)).exception() is not None


def test_batcher_does_not_wait_for_images_that_are_not_coming(tiny_model: Path) -> None:
    """With nothing being decoded, a lone image runs at once, not after max_wait (30 s
    here); while images are said to be coming, it waits for them."""
    model = load_model(tiny_model)
    coming = [0]
    sizes: list[int] = []
    b = Batcher(model, max_batch=8, max_wait=30.0, coming=lambda: coming[0],
                on_batch=lambda n, s: sizes.append(n))
    b.start()
    assert abs(b.submit(np.full((32, 32, 3), 50, dtype=np.uint8)).result(timeout=20).logit
               - 2.0) < 1e-5
    coming[0] = 1
    first = b.submit(np.full((32, 32, 3), 60, dtype=np.uint8))
    second = b.submit(np.full((32, 32, 3), 70, dtype=np.uint8))
    coming[0] = 0
    assert abs(first.result(timeout=20).logit - 4.0) < 1e-5
    assert abs(second.result(20).logit - 6.0) < 1e-5
    b.close()
    assert sizes[0] == 1 and sum(sizes) == 3


def test_batcher_from_many_threads(tiny_model: Path) -> None:
    model = load_model(tiny_model)
    b = Batcher(model, max_batch=16, max_wait=0.002)
    b.start()
    wrong: list[tuple[int, float]] = []

    def client(k: int) -> None:
        for i in range(20):
            v = (k * 20 + i) % 256
            got = b.submit(np.full((32, 32, 3), v, dtype=np.uint8)).result(timeout=60).logit
            if abs(got - (v - 40) * 0.2) > 1e-4:
                wrong.append((v, got))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert wrong == []


def test_create_app_itself_refuses_a_public_bind_without_a_token(tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    """The rule lives in serve.security and create_app applies it: code that builds the
    app directly cannot skip it (as `leukoedge serve --host 0.0.0.0` cannot)."""
    from leukoedge.errors import UsageError
    from leukoedge.serve.security import read_token

    m = load_model(tiny_model)
    for host in ("0.0.0.0", "::", "192.0.2.7"):
        with pytest.raises(UsageError, match="needs a bearer token"):
            create_app(m, Settings(hosts=None, bind=host))
    for host in ("127.0.0.1", "localhost", "::1"):
        create_app(m, Settings(hosts=None, bind=host))  # loopback: no token needed
    create_app(m, Settings(hosts=None, bind="0.0.0.0", token="s3cret-token-of-some-length"))
    f = tmp_path / "token.txt"
    f.write_text("  s3cret-token-of-some-length\n")
    f.chmod(0o600)
    got = read_token(f)
    assert got.token == "s3cret-token-of-some-length" and got.notes == ()
    f.chmod(0o644)
    assert "chmod 600" in read_token(f).notes[0]
    f.write_text("short")
    with pytest.raises(UsageError, match="at least 16"):
        read_token(f)


def test_serve_needs_a_token_off_loopback_and_checks_its_model(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(assemble(), ["serve", "--model", str(tiny_model), "--host", "0.0.0.0"])
    assert r.exit_code == 2
    assert "needs a bearer token" in r.output and "Traceback" not in r.output
    short = tmp_path / "short.txt"
    short.write_text("abc\n")
    r = run(assemble(), ["serve", "--model", str(tiny_model), "--host", "0.0.0.0",
                         "--token-file", str(short)])
    assert r.exit_code == 2 and "at least 16" in r.output
    r = run(assemble(), ["serve", "--model", str(tmp_path / "none.onnx")])
    assert r.exit_code == 3 and "not found" in r.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    r = run(assemble(), ["serve", "--model", str(junk)])
    assert r.exit_code == 3
    r = run(assemble(), ["serve", "--model", str(tiny_model), "--provider", "cuda"])
    from conftest import cuda_problem

    if cuda_problem() is not None:
        assert r.exit_code == 3 and "--provider cuda" in r.output
    r = run(assemble(), ["serve", "--model", str(tiny_model), "--max-batch", "0"])
    assert r.exit_code == 2
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run(assemble(), ["serve", "--model", str(tiny_model), "--port", str(port)])
        assert r.exit_code == 2 and "cannot listen" in r.output and "Traceback" not in r.output


def test_the_page_takes_the_row_columns_from_the_server(client: TestClient) -> None:
    """/v1/model names the rows' columns and CSV format (leukoedge.output); app.js holds
    no copy of them, so a new column (drift was one) reaches the page's CSV by itself."""
    from leukoedge.output import COLUMNS, DECIMALS, TEXT_COLUMNS

    rows = client.get("/v1/model").json()["rows"]
    assert rows == {"columns": list(COLUMNS), "decimals": DECIMALS,
                    "text_columns": list(TEXT_COLUMNS)}
    js = (Path(__file__).resolve().parents[1] / "leukoedge" / "serve" / "static" /
          "app.js").read_text(encoding="utf-8")
    assert '"prob_all", "label"' not in js and "prob_all: 6" not in js
    assert "state.rows.columns" in js


def test_serve_leaves_a_core_and_does_not_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's inference threads default to the cores but one (the event loop and the
    decoders need one), and its onnxruntime threads sleep instead of spinning when idle;
    classify keeps spinning, and an explicit --threads is used as given."""
    import onnxruntime as ort

    from leukoedge import session
    from leukoedge.commands import serve as serve_cmd
    from leukoedge.session import SessionConfig, session_options

    for present, want in ((1, 1), (2, 1), (16, 15)):
        monkeypatch.setattr(session, "cores", lambda n=present: n)
        assert serve_cmd.serve_threads() == want
    key = "session.intra_op.allow_spinning"
    assert session_options(ort, SessionConfig(spin=False)).get_session_config_entry(key) == "0"
    assert SessionConfig().spin  # classify and the other commands: onnxruntime's default
