"""The listening report (``vqaudio eval --report``, ``vqaudio sample --report``): its folder,
its links, its 'n/a' metrics, and the page as headless Chromium shows it.

The commands run in this process (typer's test runner): torch, matplotlib and the listener
models are loaded once, which keeps these tests to seconds (test_cli covers the subprocess)."""

import base64
import html.parser
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def vqaudio(*args, check=True) -> Result:
    """``vqaudio ARGS`` in this process: exit status, stdout and stderr."""
    from typer.testing import CliRunner

    from vqaudio.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    if check and r.exit_code != 0:
        raise AssertionError(f"vqaudio {args} failed:\n{r.stdout}\n{r.stderr}")
    return Result(r.exit_code, r.stdout, r.stderr)

FSDD = ROOT / "data" / "fsdd"
# Three digits of three speakers; 2_theo_1 lasts 0.23 s: too short for PESQ and STOI.
FILES = ("2_theo_1.wav", "3_yweweler_12.wav", "7_jackson_1.wav")


class Page(html.parser.HTMLParser):
    """Tags (checked to nest and close), links (src/href) and text of an HTML page."""

    VOID = {"meta", "img", "br", "link", "input", "source", "hr"}

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.links, self.tags, self.text, self.errors = [], [], [], [], []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.links += [v for k, v in attrs if k in ("src", "href")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """The report of 3 files at 1 and 2 levels (no listeners: fast), and eval's printed output."""
    out = tmp_path_factory.mktemp("report") / "listen"
    p = vqaudio("eval", *(FSDD / f for f in FILES), "--model", run_dir, "-l", "1", "-l", "2",
                "--report", out, "--report-files", "3", "--no-listeners")
    return out, p.stdout


def test_report_folder_holds_every_file_it_links(report):
    out, stdout = report
    assert f"report: {out / 'index.html'}" in stdout and "nan" not in stdout
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert not page.errors, page.errors
    assert page.tags[0][0] == "html" and ("meta", {"charset": "utf-8"}) in page.tags
    baselines = [name for name, tool in (("Codec2 2400", "c2enc"), ("Opus 6k", "opusenc")) if shutil.which(tool)]
    systems = 1 + 2 + len(baselines)  # original, 2 level counts, the installed baselines
    audio = [a["src"] for t, a in page.tags if t == "audio"]
    images = [a for t, a in page.tags if t == "img"]
    assert len(audio) == len(images) == 3 * systems
    for link in page.links:
        assert not link.startswith(("/", "http:", "https:", "file:")), link  # relative: opens from disk
        assert (out / link).is_file(), link
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {"index.html", *page.links}  # nothing unlinked, nothing left over
    for src in audio:
        info = sf.info(out / src)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (8000, 1, "PCM_16", "WAV")
    from PIL import Image

    for img in images:
        with Image.open(out / img["src"]) as im:
            assert im.format == "PNG" and im.size == (int(img["width"]), int(img["height"]))
            assert im.width >= 600 and im.height >= 200
    text = " ".join(page.text)
    for f in FILES:
        assert f in text
    for name in ("original", "vqaudio 1 level", "vqaudio 2 levels", *baselines):
        assert name in text
    missing = [name for name in ("Codec2 2400", "Opus 6k") if name not in baselines]
    if missing:  # one line says which were left out and how to install them
        assert "Not in this report: " in text and "apt-get install -y" in text
    assert "n/a: input shorter than 0.25 s" in text  # PESQ of 2_theo_1
    assert "n/a: input shorter than 0.39 s" in text  # STOI
    assert "nan" not in text.replace("Nanny", "")


def test_eval_prints_n_a_never_nan(run_dir, tmp_path):
    one = tmp_path / "one.wav"
    sf.write(one, np.array([0.5]), 8000)
    text = vqaudio("eval", one, "--model", run_dir, "--no-listeners").stdout
    assert "si_snr: n/a: input shorter than 2 samples" in text and "nan" not in text
    summary = json.loads(vqaudio("eval", one, "--model", run_dir, "--no-listeners", "--json", "-l", "1").stdout)
    assert summary["si_snr"] == "n/a: input shorter than 2 samples"
    assert summary["mel_distance"] == "n/a: input shorter than 64 ms (one mel frame)"
    assert summary["pesq"] == "n/a: input shorter than 0.25 s"
    assert summary["stoi"] == "n/a: input shorter than 0.39 s"


def test_choose_files_spreads_over_labels_and_speakers():
    from vqaudio.report import choose_files

    files = [Path(f"{d}_{s}_{i}.wav") for d in (0, 1, 2) for s in ("ann", "bob") for i in (0, 1)]
    assert [f.name for f in choose_files(files, 4)] == ["0_ann_0.wav", "1_ann_0.wav", "2_ann_0.wav",
                                                         "0_ann_1.wav"]
    assert choose_files(list(reversed(files)), 4) == choose_files(files, 4)  # deterministic
    assert len(choose_files(files, 100)) == len(files)
    speakers = [Path(f"{s}-121-{i:04d}.flac") for s in (103, 1034) for i in range(3)]
    assert [f.name for f in choose_files(speakers, 2)] == ["103-121-0000.flac", "1034-121-0000.flac"]


def test_missing_baseline_tools_are_named_with_their_install_command(monkeypatch, tmp_path):
    from vqaudio import baselines, report

    monkeypatch.setattr(baselines.shutil, "which", lambda tool: None if tool.startswith("c2") else "/bin/true")
    systems, missing = report._baselines(tmp_path)
    assert [name for name, _, _ in systems] == ["Opus 6k"]
    assert missing == ["Codec2 2400 (c2enc and c2dec not found; install the Debian package: "
                       "apt-get install -y codec2)"]


@pytest.mark.parametrize("case", ["not_empty", "missing_input", "parent_missing"])
def test_report_errors_are_one_line_and_write_nothing(run_dir, tmp_path, case):
    out = tmp_path / "listen"
    src = FSDD / FILES[0]
    if case == "not_empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    elif case == "missing_input":
        src = tmp_path / "nothing.wav"
    else:
        out = tmp_path / "no" / "listen"
    before = sorted(tmp_path.rglob("*"))
    p = vqaudio("eval", src, "--model", run_dir, "--report", out, "--no-listeners", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    expected = {"not_empty": "exists and is not empty", "missing_input": "does not exist",
                "parent_missing": "does not exist; create it first"}[case]
    assert expected in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # no partial report, no temporary folder


def test_sample_report_shows_clips_per_label_with_listener_scores(run_dir, tmp_path):
    pytest.importorskip("speechmos")
    out = tmp_path / "samples"
    p = vqaudio("sample", "--model", run_dir, "--report", out, "--num", "2", "--seconds", "0.3",
                "--label", "3", "--json")
    results = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(r["label"], r["sample"]) for r in results] == [("3", 1), ("3", 2)]
    assert all(1 <= r["dnsmos_ovrl"] <= 5 and r["digit_accuracy"] in (0.0, 1.0) for r in results)
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert not page.errors and all((out / link).is_file() for link in page.links)
    assert sum(t == "audio" for t, _ in page.tags) == 2 and "label 3" in " ".join(page.text)
    p = vqaudio("sample", "--model", run_dir, "--report", tmp_path / "again", "-o", tmp_path / "s.wav",
                check=False)
    assert p.returncode == 1 and "either -o or --report" in p.stderr
    assert not (tmp_path / "again").exists() and not (tmp_path / "s.wav").exists()


# -- in a browser ----------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--window-size=1200,2000", "--hide-scrollbars"]
# Waits until every <audio> has its metadata (or an error), then says what loaded.
PAGE_STATE = """new Promise(done => {
  const audio = [...document.querySelectorAll('audio')];
  const settled = a => a.readyState >= 1 || a.error !== null;
  const check = () => audio.every(settled) ? finish() : setTimeout(check, 50);
  const finish = () => {
    const rect = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
    const images = [...document.images];
    done({audio: audio.map(a => ({src: a.getAttribute('src'), ok: a.error === null && a.duration > 0})),
          images: images.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
          firstAudio: rect(audio[0]), firstImage: rect(images[0])});
  };
  check();
})"""


def browse(index: Path, workdir: Path) -> tuple[list[str], dict, np.ndarray]:
    """Open ``index`` in headless Chromium through the DevTools protocol: (console errors,
    failed loads and uncaught exceptions; what the page loaded; a 1200x2000 screenshot)."""
    import websocket  # the websocket-client package (dev extra)

    profile = workdir / "profile"
    proc = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        ids, errors = iter(range(1, 10**6)), []

        def call(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    assert "error" not in msg, msg
                    return msg["result"]
                note(msg)

        def note(msg):
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                      for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
            elif method == "Page.loadEventFired":
                loaded.append(True)

        loaded = []
        for domain in ("Runtime", "Log", "Page"):
            call(f"{domain}.enable")
        call("Emulation.setDeviceMetricsOverride", width=1200, height=2000, deviceScaleFactor=1, mobile=False)
        call("Page.navigate", url=index.resolve().as_uri())
        while not loaded:
            note(json.loads(ws.recv()))
        state = call("Runtime.evaluate", expression=PAGE_STATE, awaitPromise=True, returnByValue=True)
        state = state["result"]["value"]
        png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        # Let late messages arrive: 0.3 s after the last load, then one round trip.
        call("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 300))", awaitPromise=True)
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    (workdir / "screenshot.png").write_bytes(png)
    return errors, state, shot


def _region(shot: np.ndarray, rect) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in rect)
    return shot[max(y, 0): y + h, max(x, 0): x + w]


browser = pytest.mark.skipif(shutil.which("chromium") is None,
                             reason="headless Chromium not installed (Debian: apt-get install -y chromium)")


@browser
def test_report_opens_in_chromium_without_errors_and_shows_players_and_spectrograms(report, tmp_path):
    pytest.importorskip("websocket", reason="the websocket-client package (dev extra) talks to Chromium")
    out, _ = report
    errors, state, shot = browse(out / "index.html", tmp_path)
    assert errors == []
    assert state["audio"] and all(a["ok"] for a in state["audio"]), state["audio"]
    assert state["images"] and all(i["ok"] for i in state["images"]), state["images"]
    assert shot.shape == (2000, 1200, 3)
    assert shot.std() > 20  # not a blank page
    spectrogram = _region(shot, state["firstImage"])
    assert spectrogram.shape[1] >= 600  # shown at its size, on screen
    colour = (spectrogram.max(-1) - spectrogram.min(-1)) > 60
    assert colour.mean() > 0.3  # the colour map is visible
    player = _region(shot, state["firstAudio"])
    assert player.size and player.std() > 10  # the player's controls are drawn, not empty space


@browser
def test_the_browser_check_fails_on_a_broken_page(report, tmp_path):
    """The check above can fail: a missing file, a script error and a console error are caught."""
    pytest.importorskip("websocket", reason="the websocket-client package (dev extra) talks to Chromium")
    out, _ = report
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    first_audio = sorted((broken / "audio").iterdir())[0]
    first_image = sorted((broken / "img").iterdir())[0]
    first_audio.unlink()
    first_image.unlink()
    index = broken / "index.html"
    index.write_text(index.read_text().replace(
        "</body>", "<script>console.error('boom'); undefined_function();</script></body>"))
    errors, state, _ = browse(index, tmp_path)
    text = "\n".join(errors)
    assert "boom" in text and "undefined_function" in text
    assert first_image.name in text  # a failed load is an error in the log
    assert [a["src"] for a in state["audio"] if not a["ok"]] == [f"audio/{first_audio.name}"]
    assert [i["src"] for i in state["images"] if not i["ok"]] == [f"img/{first_image.name}"]
