"""A newcomer's first hour: the README's quick start and the demo's printed commands, run
exactly as printed, in a clean environment, as a user other than the demo's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

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


def card_files(root: Path, flow: str, step: str) -> list:
    cards = root / ".metaflow" / "mf.cards" / flow / "runs"
    return sorted(cards.glob("*/steps/%s/tasks/*/cards/*.html" % step))


def test_readme_quick_start_as_printed(tmp_path):
    quick_start = section(README.read_text(), "Quick start")
    flow_source, notebook = code_blocks(quick_start, "python")
    (commands,) = code_blocks(quick_start, "sh")
    assert "save this as `train_flow.py`" in quick_start
    work = tmp_path / "project"
    work.mkdir()
    (work / "train_flow.py").write_text(flow_source)
    env = clean_env(tmp_path / "home", USERNAME="carol")

    out = bash(commands, work, env)
    assert "simulated crash after epoch 3" in out
    assert "resuming after epoch 3" in out and "trained 6 epochs" in out
    # The retry restored the RNG state after an exception: the log says what that means.
    assert out.count(RNG_NOTE) == 1
    # Removing an earlier attempt's card when there is none is not worth a warning.
    assert CARD_WARNING not in out and "CardNotPresentException" not in out
    keys = re.findall(r"^(TrainFlow/\S+)", out, flags=re.M)
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["1", "2", "3", "4", "5", "6"]

    (work / "notebook.py").write_text(notebook)
    shown = bash("python notebook.py", work, env)
    assert "'model'" in shown and "torch.Size([1, 8])" in shown

    # One card for the task, the final one, rendered by the attempt that succeeded.
    (card,) = card_files(work, "TrainFlow", "train")
    assert 'METAFLOW_RELOAD_TOKEN = "final"' in card.read_text()


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


INSPECT_FLOW = """
from metaflow import FlowSpec, checkpoint, current, retry, step


class InspectDefaultFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint(exclude=["seen"])
    @step
    def train(self):
        self.count = 0
        self.seen = []
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
            self.seen.append(current.checkpoint.inspect()["version"])
        while self.count < 3:
            self.count += 1
            current.checkpoint.save()
            self.seen.append(current.checkpoint.inspect()["version"])
            if self.count == 2 and current.retry_count == 0:
                raise RuntimeError("failure after save 2")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InspectDefaultFlow()
"""


def test_inspect_defaults_to_the_newest_checkpoint_and_a_retry_ends_with_one_card(world, write_flow):
    flow = write_flow(INSPECT_FLOW, "inspect_default_flow.py")
    out = world.run_flow(flow).stdout
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
