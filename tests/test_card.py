"""The checkpoint card: real flows render it, Metaflow's `card get` fetches it, headless
Chromium renders the HTML, and the tests read the page as the browser built it."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import metaflow  # noqa: F401  (Metaflow first: it sets up the extension's modules)
import pytest
from conftest import REPO, TEST_FLOWS
from engine_helpers import State, local_store, make_session
from s3_server import s3_server, s3_world  # noqa: F401  (fixtures)

from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.lineage import lineage
from metaflow_extensions.implicit_checkpoint.engine.session import (
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)
from metaflow_extensions.implicit_checkpoint.engine.reading import list_task
from metaflow_extensions.implicit_checkpoint.plugins.cards.checkpoint.chart import (
    metric_charts,
)
from metaflow_extensions.implicit_checkpoint.plugins.cards.checkpoint.page import (
    render_page,
)
from metaflow_extensions.implicit_checkpoint.plugins.cards.checkpoint.report import (
    TaskCheckpoints,
    build_report,
)

CARD_TYPE = "implicit_checkpoint"
RESUME_FLOW = TEST_FLOWS / "resume_flow.py"
LIVE_FLOW = TEST_FLOWS / "card_live_flow.py"
CASES_FLOW = TEST_FLOWS / "card_cases_flow.py"

_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr",
}


# -- the browser ---------------------------------------------------------------------


@pytest.fixture
def output_dir(request) -> Path:
    """This test's output folder (kept after the run: screenshots, fetched cards)."""
    path = REPO / "test-output" / "test_card" / request.node.name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(
            "Headless Chromium is needed to render the card: `make test` installs Debian's "
            "`chromium` package, or run `apt-get install chromium`."
        )
    return Browser(chromium, tmp_path / "chromium-profile")


class Browser:
    """Headless Chromium, one fresh process per page."""

    def __init__(self, executable: str, profile: Path):
        self.executable = executable
        self.profile = profile

    def _run(self, html: Path, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [
                self.executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--user-data-dir=%s" % self.profile,
                *args,
                html.resolve().as_uri(),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def page(self, html: Path) -> "RenderedPage":
        """The page as Chromium built it (after parsing and running its scripts)."""
        return RenderedPage(self._run(html, "--dump-dom").stdout)

    def screenshot(self, html: Path, png: Path, width: int = 1200, height: int = 1400) -> None:
        self._run(html, "--hide-scrollbars", "--window-size=%d,%d" % (width, height),
                  "--screenshot=%s" % png)
        assert png.stat().st_size > 10000


_NO_SPACE = "\x00"


class RenderedPage(HTMLParser):
    """Reads a DOM dump: table rows by class, text by element id, element counts."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.dom = dom
        self.rows = {}  # tr class -> [[cell text, ...], ...]
        self.text_by_id = {}
        self.tags = {}  # tag -> count; "tag.class" -> count
        self.title = ""
        self._open = []  # [tag, attrs, text parts, cells]
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for cls in (attrs.get("class") or "").split():
            key = "%s.%s" % (tag, cls)
            self.tags[key] = self.tags.get(key, 0) + 1
        if tag == "wbr" and self._open:  # a line-break opportunity, not a space
            self._open[-1][2].append(_NO_SPACE)
        if tag not in _VOID:
            self._open.append([tag, attrs, [], []])

    def handle_endtag(self, tag):
        while self._open:
            open_tag, attrs, parts, cells = self._open.pop()
            joined = " ".join(parts).replace(" %s " % _NO_SPACE, "").replace(_NO_SPACE, "")
            text = " ".join(joined.split())
            if self._open:
                self._open[-1][2].append(text)
            if open_tag in ("td", "th"):
                for outer in reversed(self._open):
                    if outer[0] == "tr":
                        outer[3].append(text)
                        break
            if open_tag == "tr":
                for cls in (attrs.get("class") or "").split():
                    self.rows.setdefault(cls, []).append(cells)
            if open_tag == "title" and not self.title:  # the document's, not an SVG tooltip
                self.title = text
            if attrs.get("id"):
                self.text_by_id[attrs["id"]] = text
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._open[-1][2].append(data)

    def count(self, selector: str) -> int:
        return self.tags.get(selector, 0)

    def text(self, element_id: str) -> str:
        return self.text_by_id[element_id]


# -- fetching cards the way a user does ---------------------------------------------------


def card_hashes(world, flow: Path, pathspec: str) -> list:
    """Hashes of the task's checkpoint cards, from `card list --as-json`."""
    proc = world.command(
        flow, "card", "list", pathspec.split("/", 1)[1], "--type", CARD_TYPE, "--as-json"
    )
    listing = json.loads(proc.stdout[proc.stdout.index("{"):])
    return [card["hash"] for card in listing["cards"]]


def reload_token(html: str) -> str:
    """The token Metaflow stamps into a card: "final" for the card of the finished task."""
    return re.search(r'METAFLOW_RELOAD_TOKEN = "([^"]*)"', html).group(1)


def fetch_card(world, flow: Path, pathspec: str, out: Path, card_hash: str = None) -> Path:
    """`python flow.py card get RUN/STEP/TASK out.html` (with --hash when given)."""
    run_step_task = pathspec.split("/", 1)[1]
    args = ["card", "get", run_step_task, "--type", CARD_TYPE]
    if card_hash:
        args += ["--hash", card_hash]
    world.command(flow, *args, str(out))
    assert out.exists(), "card get wrote no file for %s" % pathspec
    return out


def assert_self_contained(html: str) -> None:
    """Nothing is fetched: no external scripts, styles, fonts or images."""
    assert not re.search(r"<(script|img|iframe|link)\b[^>]*\b(src|href)\s*=", html, re.I)
    assert "@import" not in html and "url(" not in html
    assert "http://" not in html and "https://" not in html


# -- end to end: a crash, a resume, the final card --------------------------------------


@pytest.mark.flow
@pytest.mark.browser
def test_final_card_tells_the_story_of_every_attempt(resumed_run, browser, output_dir):
    # The session's shared run: killed after save 3 of 5 (conftest.RESUMED_RUN_ARGS).
    world, run_id, pathspec = resumed_run.world, resumed_run.run_id, resumed_run.task_pathspec

    # The attempt that succeeded rendered the final card, and it is the task's only
    # checkpoint card: the live card the killed attempt left was removed when the retry
    # started, so a plain `card get` fetches it.
    assert len(card_hashes(world, RESUME_FLOW, pathspec)) == 1
    html_path = fetch_card(world, RESUME_FLOW, pathspec, output_dir / "card.html")
    html = html_path.read_text()
    assert reload_token(html) == "final"
    assert_self_contained(html)

    page = browser.page(html_path)
    browser.screenshot(html_path, output_dir / "card.png", height=1150)

    assert page.text("ic-current-attempt") == "1"
    assert page.text("ic-resumed-from").startswith(pathspec + "/0/odd/3")
    assert "attempt 0, version 3, run %s" % run_id in page.text("ic-resumed-from")
    assert page.count("span.ic-badge-final") == 1
    assert "attempt 0 killed 3 checkpoint(s)" in page.text("ic-card")
    assert "attempt 1 (this card) succeeded 2 checkpoint(s), resumed from v3 of attempt 0" in (
        page.text("ic-card")
    )

    # One row per checkpoint of each attempt, oldest first.
    rows = page.rows["ic-checkpoint-row"]
    assert [(r[0], r[1], r[2].split()[0]) for r in rows] == [
        ("0", "v1", "odd"), ("0", "v2", "even"), ("0", "v3", "odd"),
        ("1", "v4", "even"), ("1", "v5", "odd"),
    ]
    assert "resumed by attempt 1" in rows[2][2]
    assert "count 4" in rows[3][7] and "attempt 1" in rows[3][7]
    assert all(r[4] == "attempts_seen, count, resumed_from, weights" for r in rows)
    assert [g[0] for g in page.rows["ic-group-row"]] == [
        "Attempt 0 · killed", "Attempt 1 · succeeded",
    ]

    # The lineage: the checkpoint attempt 1 loaded, with its attempt.
    lineage_rows = page.rows["ic-lineage-row"]
    assert len(lineage_rows) == 1
    position, attempt, version, name, run, _, key, metadata = lineage_rows[0]
    assert (position, attempt, version, run) == ("1", "0", "v3", run_id)
    assert name == "odd \u21bb this attempt resumed from it" and key == pathspec + "/0/odd/3"
    assert "count 3" in metadata

    # The chart: one line per attempt for each numeric metadata key, the resume marked.
    assert page.count("svg.ic-svg") == 2  # "count" and "attempt"
    assert page.count("polyline.ic-a0") == 2 and page.count("polyline.ic-a1") == 2
    assert page.count("circle.ic-resume-ring") == 2
    assert "attempt 1 \u2190 v3" in page.text("ic-chart")

    totals = page.text("ic-totals")
    assert "Checkpoints 5" in totals and "Attempts 2" in totals


@pytest.mark.flow
@pytest.mark.s3
@pytest.mark.browser
def test_card_reads_the_checkpoint_store_on_s3(s3_world, browser, output_dir):
    s3_world.run_flow(RESUME_FLOW, "--crash", "exit", "--crash-after", "2", "--saves", "3")
    pathspec = "ResumeFlow/%s/train/2" % s3_world.latest_run_id("ResumeFlow")
    fetched = [
        fetch_card(s3_world, RESUME_FLOW, pathspec, output_dir / ("card-%s.html" % h), h)
        for h in card_hashes(s3_world, RESUME_FLOW, pathspec)
    ]
    (final,) = [p for p in fetched if reload_token(p.read_text()) == "final"]
    page = browser.page(final)
    assert [(r[0], r[1]) for r in page.rows["ic-checkpoint-row"]] == [
        ("0", "v1"), ("0", "v2"), ("1", "v3"),
    ]
    assert "attempt 0 killed" in page.text("ic-card")
    assert page.rows["ic-lineage-row"][0][6] == pathspec + "/0/even/2"


# -- live: the card while the task runs ---------------------------------------------------


LIVE_POLL = """
import json, sys, time
from metaflow import Flow, namespace
from metaflow.cards import get_cards
namespace(None)
deadline = time.time() + 240
while time.time() < deadline:
    try:
        task = Flow("CardLiveFlow").latest_run["start"].task
        for card in get_cards(task, type=%(type)r):
            update = card.get_data()
            if update and update["data"]["body"].count("ic-checkpoint-row") >= 2:
                print(json.dumps({"html": card.get(), "update": update, "pathspec": task.pathspec}))
                sys.exit(0)
    except Exception:
        pass  # the run, the task or its card does not exist yet
    time.sleep(0.5)
print(json.dumps(None))
"""


@pytest.mark.flow
@pytest.mark.browser
def test_live_card_shows_the_saves_made_so_far(world, browser, output_dir, tmp_path):
    go_file = tmp_path / "go"
    flow = world.start_run(LIVE_FLOW, "--go-file", str(go_file))
    try:
        live = world.python(LIVE_POLL % {"type": CARD_TYPE}, timeout=300)
    finally:
        go_file.touch()
        output, _ = flow.communicate(timeout=300)
    assert flow.returncode == 0, output[-5000:]
    assert live is not None, "the live card never showed two saves:\n" + output[-3000:]

    # The runtime card, with the newest data update applied the way Metaflow's viewers
    # apply it (only while the update's reload token matches the page's).
    assert live["update"]["reload_token"] == reload_token(live["html"])
    html = live["html"].replace(
        "</body>",
        "<script>metaflow_card_update(%s);</script></body>" % json.dumps(live["update"]["data"]),
    )
    assert_self_contained(live["html"])
    live_path = output_dir / "live.html"
    live_path.write_text(html)
    page = browser.page(live_path)
    browser.screenshot(live_path, output_dir / "live.png", height=900)

    assert page.count("span.ic-badge-live") == 1
    assert "attempt 0 (this card) running" in page.text("ic-card")
    live_rows = [(r[0], r[1]) for r in page.rows["ic-checkpoint-row"]]
    assert len(live_rows) >= 2
    assert live_rows == [("0", "v%d" % v) for v in range(1, len(live_rows) + 1)]

    # The final card has every save, the live ones first.
    pathspec = live["pathspec"]
    final = browser.page(fetch_card(world, LIVE_FLOW, pathspec, output_dir / "final.html"))
    final_rows = [(r[0], r[1]) for r in final.rows["ic-checkpoint-row"]]
    assert final_rows[: len(live_rows)] == live_rows and len(final_rows) >= len(live_rows)
    assert final.count("span.ic-badge-final") == 1

    # The user's own card on the same step still works (Metaflow's script renders it).
    notes = output_dir / "notes.html"
    world.command(LIVE_FLOW, "card", "get", pathspec.split("/", 1)[1], "--id", "notes", str(notes))
    assert "user notes stay on their own card" in browser.page(notes).dom


# -- quiet and hostile cases ------------------------------------------------------------


@pytest.mark.flow
@pytest.mark.browser
def test_cards_of_a_step_without_saves_one_attempt_and_an_eager_resume(world, browser, output_dir):
    for _ in range(2):
        output = world.run_flow(CASES_FLOW).stdout
        assert "live card could not be refreshed" not in output  # every save found its card
    first_run, second_run = sorted(
        world.python(
            """
            import json
            from metaflow import Flow, namespace
            namespace(None)
            print(json.dumps([run.id for run in Flow("CardCasesFlow")]))
            """
        ),
        key=int,
    )

    def card_page(pathspec: str, name: str) -> RenderedPage:
        path = fetch_card(world, CASES_FLOW, pathspec, output_dir / ("%s.html" % name))
        assert_self_contained(path.read_text())
        return browser.page(path)

    # A step that never saves.
    quiet = card_page("CardCasesFlow/%s/start/1" % first_run, "never_saves")
    assert "No checkpoint saved." in quiet.text("ic-history")
    assert quiet.text("ic-no-lineage") == "no lineage: attempt 0 has not saved a checkpoint yet"
    assert quiet.text("ic-no-chart").startswith("No numeric metadata to chart.")
    assert "Checkpoints 0" in quiet.text("ic-totals")
    assert "attempt 0 (this card) succeeded" in quiet.text("ic-card")
    assert quiet.rows.get("ic-checkpoint-row") is None

    # One attempt, one save, metadata full of markup: shown as text, cut short.
    one = card_page("CardCasesFlow/%s/train/2" % first_run, "one_attempt")
    browser.screenshot(output_dir / "one_attempt.html", output_dir / "one_attempt.png", height=900)
    assert one.count("script") == 1  # only the card's own update hook
    assert one.count("img") == 0
    for markup in ("<script>document", "<img src", "<b>bold"):
        assert markup not in one.dom  # the browser saw text, not elements
    assert one.title == "Checkpoints of CardCasesFlow/%s/train/2" % first_run
    (row,) = one.rows["ic-checkpoint-row"]
    metadata = row[7]
    assert "note <script>document.title='pwned'</script>xxx" in metadata
    assert "x" * 100 not in metadata  # truncated
    assert "image <img src=x onerror=" in metadata
    assert '"deeper":["<b>bold</b>"' in metadata
    assert one.text("ic-no-lineage") == (
        "no lineage: attempt 0 started fresh (it loaded no checkpoint before saving)"
    )
    assert "Checkpoints 1" in one.text("ic-totals")  # the page goes on after the markup

    # The next run resumed from it (eager): the lineage crosses runs.
    resumed = card_page("CardCasesFlow/%s/train/2" % second_run, "eager_resume")
    first_key = "CardCasesFlow/%s/train/2/0/checkpoint/1" % first_run
    assert resumed.text("ic-resumed-from").startswith(first_key)
    assert "run %s (an earlier run)" % first_run in resumed.text("ic-resumed-from")
    (link,) = resumed.rows["ic-lineage-row"]
    assert link[4] == "%s (earlier run)" % first_run and link[6] == first_key
    assert "run %s v1" % first_run in resumed.text("ic-chart")

    # A checkpoint card the user declared is the step's only one, with the default id.
    explicit = "CardCasesFlow/%s/explicit/3" % second_run
    (only,) = card_hashes(world, CASES_FLOW, explicit)
    proc = world.command(CASES_FLOW, "card", "list", explicit.split("/", 1)[1], "--as-json")
    assert '"id": "%s"' % CARD_TYPE in proc.stdout
    page = browser.page(fetch_card(world, CASES_FLOW, explicit, output_dir / "explicit.html"))
    assert [r[1] for r in page.rows["ic-checkpoint-row"]] == ["v1"]

    # card=False: no card at all.
    proc = world.command(CASES_FLOW, "card", "list", "%s/end/4" % second_run, check=False)
    assert CARD_TYPE not in proc.stdout


# -- the card from manifests alone --------------------------------------------------------


def _manifests(store, pathspec_parts):
    return [a.implicit_manifest for a in list_task(store, *pathspec_parts)]


def _session(store, state, run_id, attempt):
    session = CheckpointSession(
        store,
        TaskIdentity("UnitFlow", run_id, "train", "1", attempt),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
    )
    session.start()
    return session


def test_lineage_follows_parents_across_attempts_and_runs(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.step = 1
    first = _session(store, state, "1", 0).save(metadata={"loss": 1.0})
    resumed = _session(store, state, "1", 1)
    resumed.load()
    second = resumed.save(metadata={"loss": 0.5})
    next_run = _session(store, state, "2", 0)
    next_run.load(second.key)
    third = next_run.save(metadata={"loss": 0.25})

    chain = lineage(store, third.key)
    assert [link.key for link in chain] == [first.key, second.key, third.key]
    assert all(link.readable for link in chain)
    assert lineage(store, None) == []

    # A parent that is gone ends the chain there, and says why.
    store.delete_manifest(CheckpointKey.parse(first.key))
    chain = lineage(store, third.key)
    assert [link.key for link in chain] == [first.key, second.key, third.key]
    assert not chain[0].readable and "no longer stored" in chain[0].problem

    # So does a damaged one.
    path = Path(tmp_path) / store.manifest_path(CheckpointKey.parse(second.key))
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    chain = lineage(local_store(tmp_path), third.key)  # a new store: no cached manifests
    assert [link.key for link in chain] == [second.key, third.key]
    assert "unreadable" in chain[0].problem

    # And a parent key that is not a key at all.
    assert "not readable" in lineage(store, "not/a/key")[0].problem


@pytest.mark.browser
def test_card_from_manifests_marks_missing_ancestors_and_charts_resumes(tmp_path, browser):
    store = local_store(tmp_path)
    state = State()
    first = make_session(store, state)
    for step_number in range(3):
        state.weights = [float(step_number)] * 10
        first.save(metadata={"loss": 3.0 - step_number, "ok": True})
    resumed = make_session(store, state, attempt=1)
    loaded = resumed.load()
    for step_number in range(2):
        resumed.save(metadata={"loss": 1.5 - step_number, "accuracy": 0.5 + step_number / 10})
    manifests = _manifests(store, ("UnitFlow", "1", "train", "1"))
    store.delete_manifest(CheckpointKey.parse(loaded.key))  # retention removed it since

    task = TaskCheckpoints(
        pathspec="UnitFlow/1/train/1",
        attempt=1,
        statuses=["failed", "succeeded"],
        checkpoints=manifests,
        lineage=lineage(local_store(tmp_path), loaded.key),
    )
    report = build_report(task)
    chart = metric_charts(manifests)
    assert [c["metric"] for c in chart["charts"]] == ["loss", "accuracy"]  # bools are not numbers
    assert [s["cls"] for s in chart["charts"][0]["series"]] == ["ic-a0", "ic-a1"]
    (resume,) = chart["charts"][0]["resumes"]
    assert resume["label"] == "attempt 1 \u2190 v3" and resume["link"] is not None
    assert report["totals"]["checkpoints"] == 5

    path = tmp_path / "card.html"
    path.write_text(render_page(report))
    page = browser.page(path)
    (missing,) = page.rows["ic-lineage-row"]
    assert "no longer stored" in missing[6]
    groups = [g[0] for g in page.rows["ic-group-row"]]
    assert groups == ["Attempt 0 · failed", "Attempt 1 · succeeded"]
    assert page.count("polyline.ic-line") == 3  # loss: two attempts; accuracy: one



@pytest.mark.browser
def test_a_long_run_shows_its_first_and_newest_saves_and_says_what_it_left_out(tmp_path, browser):
    store = local_store(tmp_path)
    state = State()
    session = make_session(store, state, rng=False)
    for number in range(1, 106):
        state.number = number
        session.save(metadata={"loss": 1.0 / number})
    report = build_report(
        TaskCheckpoints(
            pathspec="UnitFlow/1/train/1",
            attempt=0,
            statuses=["running"],
            checkpoints=_manifests(store, ("UnitFlow", "1", "train", "1")),
            live=True,
        )
    )
    path = tmp_path / "card.html"
    path.write_text(render_page(report))
    page = browser.page(path)

    versions = [row[1] for row in page.rows["ic-checkpoint-row"]]
    assert versions == ["v%d" % v for v in list(range(1, 11)) + list(range(16, 106))]
    (elided,) = page.rows["ic-elided-row"]
    assert elided[0].startswith("… 5 checkpoints (v11 to v15) not shown")
    assert page.count("polyline.ic-line") == 1 and page.count("circle.ic-dot") == 0
    assert "Checkpoints 105" in page.text("ic-totals")


def test_an_attempt_that_loaded_but_never_saved_still_shows_what_it_resumed_from():
    first = {"key": "F/1/train/2/0/checkpoint/3", "attempt": 0, "version": 3, "name": "checkpoint",
             "created_on": "2026-01-01T00:00:00+00:00", "metadata": {}, "fields": {},
             "parent": None, "size": 10, "bytes_written": 10}
    report = build_report(
        TaskCheckpoints(
            pathspec="F/1/train/2",
            attempt=1,
            statuses=["killed", "succeeded"],
            checkpoints=[first],
            loaded={1: first["key"]},
        )
    )
    assert report["resumed_from"]["key"] == first["key"]
    assert report["attempts"][1]["resumed_from"]["key"] == first["key"]
    assert report["attempts"][0]["resumed_from"] is None


def test_versions_not_in_the_store_are_told_per_attempt_and_a_counter_alone_is_not_no_metadata():
    """Retention (keep_last=1) removed earlier versions: each attempt says how many it saved
    and kept, the gaps are rows naming the attempts that may have saved them; metadata of
    a counter only says the counter labels the x axis."""
    from metaflow_extensions.implicit_checkpoint.plugins.cards.checkpoint.report import version_gaps

    def manifest(version, attempt):
        return {"key": "F/1/train/2/%d/checkpoint/%d" % (attempt, version), "attempt": attempt,
                "version": version, "name": "checkpoint", "created_on": "2026-01-01T00:00:00+00:00",
                "metadata": {"epoch": version}, "fields": {"w": {}}, "parent": None, "size": 1,
                "bytes_written": 1}

    # Attempt 0 saved v1-v3 (v1, v2 removed), attempt 1 saved v4-v7 (v4-v6 removed) ...
    kept = [manifest(3, 0), manifest(7, 1), manifest(9, 1)]
    assert version_gaps(kept) == [
        {"first": 1, "last": 2, "attempts": [0]},   # before attempt 0's first: attempt 0's
        {"first": 4, "last": 6, "attempts": [0, 1]},  # between attempts: either
        {"first": 8, "last": 8, "attempts": [1]},   # inside attempt 1: attempt 1's
    ]
    report = build_report(TaskCheckpoints(pathspec="F/1/train/2", attempt=1,
                                          statuses=["killed", "succeeded"], checkpoints=kept))
    assert [a["count_text"] for a in report["attempts"]] == [
        "3 checkpoint(s) saved or begun, 1 kept", "3 checkpoint(s) saved or begun, 2 kept"]
    assert report["totals"]["not_kept"] == 6
    html = render_page(report)
    page = RenderedPage(html)
    gaps = page.rows["ic-gap-row"]
    assert [row[:2] for row in gaps] == [["0", "v1\u2013v2"], ["0/1", "v4\u2013v6"], ["1", "v8"]]
    assert "(saved by attempt 0 or 1)" in gaps[1][2] and "removed by retention" in gaps[0][2]
    assert page.text("ic-no-chart").startswith("Only epoch is in the metadata")
    assert metric_charts(kept)["counter_only"] == "epoch"
    # Without gaps, an attempt's line is as before.
    whole = build_report(TaskCheckpoints(pathspec="F/1/train/2", attempt=0, statuses=["running"],
                                         checkpoints=[manifest(1, 0), manifest(2, 0)]))
    assert whole["attempts"][0]["count_text"] == "2 checkpoint(s)" and not whole["totals"]["not_kept"]
