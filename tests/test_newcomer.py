"""A newcomer's first hour: the README's quick start and the demo's printed commands, run
exactly as printed, in a clean environment, as a user other than the demo's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TEST_FLOWS

pytestmark = pytest.mark.flow

README = REPO / "README.md"
DEMO = REPO / "scripts" / "demo.sh"
CARD_WARNING = "could not remove the checkpoint card"
RNG_NOTE = "restored the random generators"


def clean_env(home: Path, **extra: str) -> dict:
    """What a fresh shell with this environment activated has: its `python` first on PATH,
    a home of its own (no ~/.metaflowconfig), and no METAFLOW_* or user name."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "%s:/usr/local/bin:/usr/bin:/bin" % Path(sys.executable).parent,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def bash(script: str, cwd: Path, env: dict, timeout: int = 600) -> str:
    """Run ``script`` as pasted into bash (stopping at the first failing line)."""
    proc = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, "failed:\n%s\n---\n%s" % (script, proc.stdout[-6000:])
    return proc.stdout


def section(markdown: str, heading: str) -> str:
    start = markdown.index("\n## %s\n" % heading)
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end > 0 else None]


def code_blocks(text: str, language: str) -> list:
    return re.findall(r"```%s\n(.*?)```" % language, text, flags=re.S)


def card_files(root: Path, flow: str, step: str, run_id: str = "*") -> list:
    cards = root / ".metaflow" / "mf.cards" / flow / "runs"
    return sorted(cards.glob("%s/steps/%s/tasks/*/cards/*.html" % (run_id, step)))


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """The README's quick start, pasted as printed by carol (not the demo's user): the
    project folder, its environment, and what the commands printed."""
    tmp_path = tmp_path_factory.mktemp("quick_start")
    quick_start = section(README.read_text(), "Quick start")
    flow_source, notebook = code_blocks(quick_start, "python")
    (commands,) = code_blocks(quick_start, "sh")
    assert "save this as `train_flow.py`" in quick_start
    work = tmp_path / "project"
    work.mkdir()
    (work / "train_flow.py").write_text(flow_source)
    env = clean_env(tmp_path / "home", USERNAME="carol")
    out = bash(commands, work, env)
    run_id = re.search(r"run-id (\d+)", out).group(1)
    return {"work": work, "env": env, "out": out, "notebook": notebook, "run_id": run_id}


def test_readme_quick_start_as_printed(quick_start):
    work, env, out = quick_start["work"], quick_start["env"], quick_start["out"]
    assert "simulated crash after epoch 3" in out
    assert "resuming after epoch 3" in out and "trained 6 epochs" in out
    # The retry restored the RNG state after an exception: the log says what that means.
    assert out.count(RNG_NOTE) == 1
    # Removing an earlier attempt's card when there is none is not worth a warning.
    assert CARD_WARNING not in out and "CardNotPresentException" not in out
    keys = re.findall(r"^(TrainFlow/\S+)", out, flags=re.M)
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["1", "2", "3", "4", "5", "6"]

    (work / "notebook.py").write_text(quick_start["notebook"])
    shown = bash("python notebook.py", work, env)
    assert "'model'" in shown and "torch.Size([1, 8])" in shown

    # One card for the task, the final one, rendered by the attempt that succeeded.
    (card,) = card_files(work, "TrainFlow", "train", quick_start["run_id"])
    assert 'METAFLOW_RELOAD_TOKEN = "final"' in card.read_text()


#: The fences the docs may use. `sh` blocks are commands, and every one is run below;
#: `text` blocks are shown only: installs (they would change the environment the suite
#: runs in) and `make bench`.
FENCES = {"python", "sh", "text", "json", ""}
DOCS = [README] + sorted((REPO / "docs").glob("*.md"))


def test_docs_command_blocks_as_printed(quick_start):
    """Every `sh` block of the README and of docs/*.md, run as printed, in order, in the
    quick start's folder after its run (the guide says so), as carol."""
    work, env = quick_start["work"], quick_start["env"]
    outputs = {}
    for doc in DOCS:
        text = doc.read_text()
        fences = re.findall(r"^```(\w*)$", text, flags=re.M)[::2]  # opening fences
        assert set(fences) <= FENCES, "%s: fence languages %s" % (doc.name, set(fences) - FENCES)
        blocks = code_blocks(text, "sh")
        if doc == README:
            blocks = [b for b in blocks if b not in code_blocks(section(text, "Quick start"), "sh")]
        outputs[doc.name] = [bash(block, work, env) for block in blocks]
    assert not outputs["README.md"]  # the README's only commands are the quick start's
    guide = "\n".join(outputs["guide.md"])
    assert "resuming after epoch 6" in guide  # `resume train` continued from the newest
    assert re.search(r"^train\s+completed\s", guide, flags=re.M)  # status
    assert "Field data" in guide and "intact" in guide and "Would delete 0" in guide
    assert (work / "card.html").is_file()
    assert "Usage:" in "\n".join(outputs["reference.md"])


def pasted_block(demo_output: str) -> str:
    """The indented lines the demo says to paste into a shell."""
    after = demo_output[demo_output.index("paste these lines into a shell") :]
    lines = after.splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


def test_demo_prints_commands_that_work_for_another_user(tmp_path):
    output = tmp_path / "demo"
    demo = bash(
        str(DEMO),
        REPO,
        clean_env(tmp_path / "home", PYTHON=sys.executable, DEMO_OUTPUT=str(output)),
        timeout=900,
    )
    assert CARD_WARNING not in demo
    block = pasted_block(demo)
    run_id = re.search(r"--run-id (\d+)", block).group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # Pasted as is by carol, from another directory, in a fresh shell.
    out = bash(block, elsewhere, clean_env(tmp_path / "home-carol", USERNAME="carol"))
    assert "Run TrainResumeFlow/%s" % run_id in out and "completed" in out
    assert out.count("TrainResumeFlow/%s/train/" % run_id) >= 6
    assert "{'epoch': 6}" in out
    assert (output / "card.html").is_file()

    # Without --run-id, carol's namespace has no run: the error says where it looked,
    # which run exists, and what to pass; each of those options works.
    setup = "\n".join(line for line in block.splitlines() if line.startswith(("cd ", "export ")))
    flow = "%s %s" % (sys.executable, REPO / "flows" / "train_resume.py")
    env = clean_env(tmp_path / "home-carol", USERNAME="carol")
    failed = subprocess.run(
        ["bash", "-c", "%s\n%s checkpoint list" % (setup, flow)],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert failed.returncode != 0
    assert "No run of TrainResumeFlow was found in namespace user:carol" in failed.stdout
    assert "TrainResumeFlow/%s (user:demo)" % run_id in failed.stdout
    assert "--run-id %s" % run_id in failed.stdout and "None" not in failed.stdout
    for option in ("--namespace user:demo", "--all-namespaces"):
        listed = bash("%s\n%s checkpoint list --json %s" % (setup, flow, option), elsewhere, env)
        keys = [a["key"] for a in json.loads(listed[listed.index("[") :])]
        assert len(keys) == 6 and all(k.startswith("TrainResumeFlow/%s/" % run_id) for k in keys)


INSPECT_FLOW = TEST_FLOWS / "inspect_default_flow.py"


def test_inspect_defaults_to_the_newest_checkpoint_and_a_retry_ends_with_one_card(world):
    out = world.run_flow(INSPECT_FLOW).stdout
    assert CARD_WARNING not in out
    seen = world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        print(json.dumps(Flow("InspectDefaultFlow").latest_run["train"].task["seen"].data))
        """
    )
    # The resumed attempt: before saving, the checkpoint it resumed from (v2); after its
    # save, that save (v3), not the resume point.
    assert seen == [2, 3]
    (card,) = card_files(world.root, "InspectDefaultFlow", "train")
    assert 'METAFLOW_RELOAD_TOKEN = "final"' in card.read_text()


# -- the second hour: what a user trips on, as the user sees it ------------------------

SECOND_HOUR_FLOW = REPO / "tests" / "flows" / "second_hour_flow.py"


def run(args: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """A command as a user types it; output merged, as a terminal shows it."""
    return subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout,
    )


def with_card_data(html: str) -> str:
    """A card's HTML and the data Metaflow's card template embeds in it (base64 JSON),
    which its script renders in a browser."""
    import base64

    decoded = []
    for blob in re.findall(r'"([A-Za-z0-9+/=]{100,})"', html):
        try:
            decoded.append(base64.b64decode(blob).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
    return "\n".join([html] + decoded)


def kib(text: str) -> float:
    """'1.3 KiB' -> 1.3 * 1024, '644 B' -> 644."""
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 1024, "MiB": 1024 ** 2}[unit]


def test_second_hour_one_run_as_a_user_sees_it(tmp_path):
    """One run of a foreach training step (crash and retry, include=, keep_last=, a user
    card), then what the log, the CLI and the cards tell the user about it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "flow.py").write_text(SECOND_HOUR_FLOW.read_text())
    env = clean_env(tmp_path / "home", USERNAME="dave")
    python = sys.executable

    out = bash("python flow.py run", project, env)
    # 1. include= leaves self.epoch out: said at each task's first save, and when the
    # retry loads a checkpoint without it (the loop then starts over at epoch 0).
    assert out.count("leaves out self.epoch, self.started_at, which the step assigned") == 2
    assert out.count("which does not hold self.epoch: it keeps the value the step assigned "
                     "before load()") == 1
    assert "started at [0, 0]" in out
    assert out.count("leaves out") + out.count("does not hold") == 3  # once per attempt

    # 7. A foreach: list has a FOREACH column (each branch's index).
    listed = bash("python flow.py checkpoint list", project, env)
    header, *rows = [line for line in listed.splitlines() if line.startswith(("KEY", "SecondHourFlow/"))]
    assert header.split()[:2] == ["KEY", "FOREACH"]
    assert sorted(row.split()[1] for row in rows) == ["0", "0", "1"]
    keys = [row.split()[0] for row in rows]
    retried = [k for k in keys if k.split("/")[4] == "1"]
    assert len(retried) == 1

    # 7. inspect: the DATA column plus the object graph is the field data, and the
    # scheduler's row says its tensors are the optimizer's and the model's.
    shown = bash("python flow.py checkpoint inspect %s" % retried[0], project, env)
    total, tensors, graph = re.search(
        r"Field data  ([\d.]+ \w+): ([\d.]+ \w+) of tensors and arrays .* \+ ([\d.]+ \w+) of object graph",
        shown,
    ).groups()
    assert abs(kib(tensors) + kib(graph) - kib(total)) <= 0.1 * 1024
    data = {line.split()[0]: line for line in shown.splitlines()
            if line.startswith(("model ", "optimizer ", "scheduler "))}
    column = sum(kib(" ".join(line.split()[3:5])) for line in data.values())
    assert abs(column - kib(tensors)) <= 0.1 * 1024
    assert "all counted with model, optimizer" in data["scheduler"]
    assert "4 counted with model" in data["optimizer"]

    # 3. status of a finished run: completed, and the run is over.
    status = bash("python flow.py checkpoint status", project, env)
    assert re.search(r"^train\s+completed\s", status, flags=re.M) and "(over)" in status

    # The user's card and the checkpoint card side by side: by id and by type exactly
    # the user's card, as without @checkpoint; with neither, both (in the storage's
    # listing order, as Metaflow lists any two cards of a task).
    task = "%s/train/2" % keys[0].split("/")[1]
    cards = json.loads(bash(
        """python - <<'PY'
import json
from metaflow import Task
from metaflow.cards import get_cards
task = Task("SecondHourFlow/%s")
found = {}
for name, query in (("neither", {}), ("id", {"id": "notes"}), ("type", {"type": "blank"}),
                    ("ours", {"type": "implicit_checkpoint"})):
    found[name] = [[c.type, c.id] for c in get_cards(task, **query)]
found["notes"] = get_cards(task, id="notes")[0].get()
print(json.dumps(found))
PY""" % task, project, env).strip().splitlines()[-1])
    assert sorted(cards["neither"]) == [["blank", "notes"], ["implicit_checkpoint", "implicit_checkpoint"]]
    assert cards["id"] == cards["type"] == [["blank", "notes"]]
    assert "the user's own notes, branch 0" in with_card_data(cards["notes"])
    assert cards["ours"] == [["implicit_checkpoint", "implicit_checkpoint"]]
    bash("python flow.py card get %s notes.html --id notes" % task, project, env)
    assert "the user's own notes, branch 0" in with_card_data((project / "notes.html").read_text())
    both = run([python, "flow.py", "card", "get", task], project, env).stdout
    assert "notes" in both and "implicit_checkpoint" in both  # Metaflow lists the two

    # 7. The card: what retention removed, per attempt; a counter alone is not "no metadata".
    bash("python flow.py card get %s card.html --type implicit_checkpoint" % task, project, env)
    card = (project / "card.html").read_text()
    assert "attempt 0" in card and "2 checkpoint(s) saved or begun, 1 kept" in card
    assert "v3\u2013v4" in card and "(saved by attempt 0 or 1)" in card
    assert "Only <code>epoch</code> is in the metadata" in card
    assert "No numeric metadata to chart" not in card

    # 5. From another directory: where it looked, and that runs are found from the
    # directory they were made in; no variables the user never set.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = run([python, str(project / "flow.py"), "checkpoint", "list"], elsewhere, env)
    assert lost.returncode != 0
    assert "No run of SecondHourFlow was found" in lost.stdout
    assert "in the local datastore and metadata at %s" % (elsewhere / ".metaflow") in lost.stdout
    assert "Local runs are found from the directory they were made in" in lost.stdout
    assert "METAFLOW_HOME" not in lost.stdout

    # 7. verify does not count a missing blob as read.
    bash(
        """python - <<'PY'
import os
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config
store = store_from_config()
manifest = store.read_manifest(CheckpointKey.parse("%s"))
digest = sorted(manifest.storage.blobs)[0]
os.remove(os.path.join(".metaflow", "SecondHourFlow", "_implicit_checkpoints", "blobs", digest[:2], digest))
PY""" % keys[1], project, env)
    checked = run([python, "flow.py", "checkpoint", "verify", "--json"], project, env)
    assert checked.returncode != 0
    report = json.loads(checked.stdout[checked.stdout.index("{"):checked.stdout.rindex("}") + 1])
    assert len(report["blobs_missing"]) == 1
    told = run([python, "flow.py", "checkpoint", "verify"], project, env).stdout
    assert "%d blob(s) read and hashed" % report["blobs_read"] in told and ", 1 missing." in told
    # 7. list marks it, and says what (DAMAGED) means and what to run.
    marked = bash("python flow.py checkpoint list", project, env)
    assert "%s (DAMAGED)" % keys[1] in marked
    assert "part of their data is missing or altered, so a retry never resumes from them" in marked
    assert "checkpoint verify --run-id %s" % keys[1].split("/")[1] in marked


FAILING_FLOW = """
import os, signal, threading
from metaflow import FlowSpec, checkpoint, current, retry, step


class Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {{"n": self.n}}

    def load_state_dict(self, state):
        self.n = state["n"]


class OtherCounter(Counter):
    pass


class {name}(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    {decorators}
    @step
    def train(self):
        print("TRAINING STEP BODY")
        self.model = {{"w": 1}}
        self.epoch = 1
        {body}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    {name}()
"""

FAILURES = {
    # 2. A misspelled include name, with retries to burn.
    "typo": ("@retry(times=2)\n    @checkpoint(include=[\"modle\"])", "current.checkpoint.save()"),
    # 6. An attribute that cannot be pickled.
    "lock": ("@retry(times=1)\n    @checkpoint", "self.lock = threading.Lock()\n        current.checkpoint.save()"),
    # 4. current.checkpoint in a step without @checkpoint.
    "plain": ("", "current.checkpoint.save()"),
    # 8. A crash without @retry after a save; the resumed run passes.
    "crash": (
        "@checkpoint",
        "if current.checkpoint.is_loaded:\n"
        "            current.checkpoint.load()\n"
        "            print('resumed at epoch', self.epoch)\n"
        "        current.checkpoint.save()\n"
        "        if current.origin_run_id is None:\n"
        "            raise RuntimeError('crash after a save')",
    ),
    # 2. A load that does not fit what the step built (another class than saved).
    "mismatch": (
        "@retry(times=2)\n    @checkpoint",
        "self.counter = Counter() if current.retry_count == 0 else OtherCounter()\n"
        "        if current.checkpoint.is_loaded:\n"
        "            current.checkpoint.load()\n"
        "        current.checkpoint.save()\n"
        "        if current.retry_count == 0:\n"
        "            raise RuntimeError('crash after a save')",
    ),
    # 3. Killed hard after a save, no retry left.
    "kill": ("@checkpoint", "current.checkpoint.save()\n        os.kill(os.getpid(), signal.SIGKILL)"),
}


def test_second_hour_failures_as_a_user_sees_them(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(tmp_path / "home", USERNAME="erin")
    python = sys.executable
    outputs = {}
    for case, (decorators, body) in FAILURES.items():
        name = "%sFlow" % case.capitalize()
        (project / ("%s.py" % case)).write_text(
            FAILING_FLOW.format(name=name, decorators=decorators, body=body)
        )
        proc = run([python, "%s.py" % case, "run"], project, env)
        assert proc.returncode != 0, proc.stdout[-3000:]
        outputs[case] = proc.stdout

    # 2. Not retried: the user's error with "did you mean", said once, and no retry.
    typo = outputs["typo"]
    assert "names 'modle', but the step has no such attribute at save() time. Did you mean 'model'?" in typo
    assert "so it is not retried: its 2 remaining @retry attempt(s) would fail the same way" in typo
    assert "This failed task will not be retried." in typo
    assert "Task is starting (retry)" not in typo and typo.count("TRAINING STEP BODY") == 1
    run_id = re.search(r"run-id (\d+)", typo).group(1)
    status = run([python, "typo.py", "checkpoint", "status"], project, env).stdout
    assert re.search(r"^train\s+failed\s", status, flags=re.M)
    # Where a scheduler retries anyway (Argo, Batch), the retry fails at once, before the
    # step's code, with the same message: the step command as the runtime starts it.
    retry = run(
        [python, "typo.py", "--quiet", "--metadata", "local", "--environment", "local",
         "--datastore", "local", "--datastore-root", str(project / ".metaflow"), "step", "train",
         "--run-id", run_id, "--task-id", "2", "--input-paths", "%s/start/1" % run_id,
         "--retry-count", "1", "--max-user-code-retries", "2", "--namespace", "user:erin"],
        project, env,
    )
    assert retry.returncode == 202  # METAFLOW_EXIT_DISALLOW_RETRY
    assert "Attempt 0 failed with an error no retry can fix (CheckpointConfigError), so " \
           "attempt 1 fails at once, before the step's code runs" in retry.stdout
    assert "Did you mean 'model'?" in retry.stdout and "TRAINING STEP BODY" not in retry.stdout

    # The retry after the crash cannot load into what it built: its last retry is spared.
    mismatch = outputs["mismatch"]
    assert mismatch.count("Task is starting (retry)") == 1
    assert "self.counter is a live __main__.OtherCounter, but the checkpoint holds a " \
           "__main__.Counter" in mismatch
    assert "so it is not retried: its 1 remaining @retry attempt(s) would fail the same way" in mismatch

    # 6. Ours is what the user reads, not Metaflow's "Cannot pickle dump artifact".
    lock = outputs["lock"]
    assert "Cannot checkpoint self.lock of step train: it holds a _thread.lock" in lock
    assert "del self.lock" in lock and "Cannot pickle dump artifact" not in lock
    assert "Task is starting (retry)" not in lock

    # 4. What to add, not an internal error.
    plain = outputs["plain"]
    assert "Step train uses current.checkpoint but has no @checkpoint. Add it above @step" in plain
    assert "Internal error" not in plain and "AttributeError" not in plain

    # 8. No @retry: said once that nothing resumes it but `resume`; doing so resumes it.
    crash = outputs["crash"]
    hint = "has no @retry, so nothing resumes it now. Its checkpoints are kept: `python crash.py resume`"
    assert crash.count(hint) == 1
    crash_run = re.search(r"run-id (\d+)", crash).group(1)
    status = run([python, "crash.py", "checkpoint", "status", "--run-id", crash_run], project, env).stdout
    assert re.search(r"^train\s+failed\s", status, flags=re.M)
    assert "python crash.py resume --origin-run-id %s" % crash_run in status
    resumed = bash("python crash.py resume", project, env)
    assert "resumed at epoch 1" in resumed

    # 3. Killed hard with no retry left: killed, never in_progress, the run is over.
    kill_run = re.search(r"run-id (\d+)", outputs["kill"]).group(1)
    status = run([python, "kill.py", "checkpoint", "status", "--run-id", kill_run, "--json"], project, env)
    report = json.loads(status.stdout[status.stdout.index("{"):])
    assert report["run_over"] is True
    assert [s["status"] for s in report["steps"]] == ["killed"]


FAKE_PEER = {
    "plugins/__init__.py": 'STEP_DECORATORS_DESC = [("checkpoint", ".decorator.CheckpointDecorator")]\n',
    "plugins/decorator.py": (
        "from metaflow.decorators import StepDecorator\n\n\n"
        "class CheckpointDecorator(StepDecorator):\n"
        "    name = \"checkpoint\"\n"
        "    defaults = {\"load_policy\": \"fresh\"}\n"
    ),
    "toplevel/__init__.py": 'toplevel = "toplevel"\n',
    "toplevel/toplevel.py": '__mf_extensions__ = "obcheckpoint"\n\n\nclass Checkpoint:\n    pass\n',
}


def test_another_checkpoint_package_is_named_at_start(tmp_path):
    """Outerbounds' metaflow-checkpoint registers @checkpoint too: a stand-in with its
    extension name (metaflow_extensions.obcheckpoint) and its registrations."""
    peer = tmp_path / "peer"
    for rel, text in FAKE_PEER.items():
        path = peer / "metaflow_extensions" / "obcheckpoint" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = clean_env(tmp_path / "home", USERNAME="frank", PYTHONPATH=str(peer))
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_decorator import CheckpointDecorator\n"
        "from types import SimpleNamespace\n"
        "try:\n"
        "    CheckpointDecorator(attributes={'card': False}).step_init(None, None, 'train', [], None, SimpleNamespace(TYPE='local'), None)\n"
        "except Exception as ex:\n"
        "    print(type(ex).__name__, ex)\n"
    )
    proc = run([sys.executable, "-c", code], work, env)
    both = "metaflow-implicit-checkpoint and metaflow-checkpoint"
    # At import, once; and our @checkpoint, where Metaflow picks it, refuses to run.
    assert proc.stdout.count("Two packages that define @checkpoint are installed in this "
                             "environment: %s" % both) == 1, proc.stdout
    assert "pip uninstall metaflow-checkpoint" in proc.stdout
    assert "CheckpointConfigError @checkpoint on step *train*: two packages" in proc.stdout
