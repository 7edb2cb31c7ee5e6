"""Training time lost to preemptions: due()'s Young/Daly interval against fixed intervals.

A simulated job of WORK seconds of training, one step per STEP seconds, calls
``SaveSchedule.due()`` (the engine's own code, on a simulated clock) after every step and
saves when it is due; a save stops the loop SAVE_COST seconds. Preemptions come as a
Poisson process of mean MTBF seconds (the same draws for every policy). Lost time is the
job's wall time minus WORK: the saves, the work redone after each preemption, and a
RESTART per preemption (the retry's start and load).

Two cases per policy:

- "SIGKILL": no notice (an out-of-memory kill, a node lost, a grace too short): the work
  since the last committed save is redone.
- "SIGTERM handled": @checkpoint's preemption handling: the step in progress ends, due()
  is True, that save commits, and only it and the restart are lost.

    python benchmarks/preemption_simulation.py [--mtbf 1800] [--save-cost 0.2] [--trials 20]
"""

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metaflow_extensions.implicit_checkpoint.engine.save_schedule import (  # noqa: E402
    SaveRecord,
    SaveSchedule,
    young_daly_interval,
)


class SimulatedClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Policy:
    name: str
    due: Callable[[SaveSchedule], bool]


@dataclass
class Outcome:
    lost: float
    preemptions: int
    saves: int


def simulate(
    policy: Policy,
    kills: List[float],
    work: float,
    step: float,
    save_cost: float,
    restart: float,
    mtbf: float,
    notice: bool,
) -> Outcome:
    clock = SimulatedClock()
    schedule = SaveSchedule(mtbf, clock)
    done = committed = 0.0
    saves = preemptions = 0
    pending_kills = iter(kills)
    next_kill: Optional[float] = next(pending_kills, None)

    def save() -> None:
        nonlocal committed, saves
        schedule.started()
        clock.now += save_cost
        schedule.measured(save_cost)
        schedule.committed(save_cost)
        committed, saves = done, saves + 1

    while done < work:
        clock.now += step
        done += step
        if next_kill is not None and clock.now >= next_kill:
            preemptions += 1
            if notice:
                save()  # the step ended; due() is True; that save commits
            done = committed
            clock.now += restart
            # The retry is a new process: a new schedule, starting from the resume
            # point's recorded cost (as CheckpointSession.load does).
            schedule = SaveSchedule(mtbf, clock)
            if saves:
                schedule.resume_from(SaveRecord(save_cost, save_cost, False))
            next_kill = next(pending_kills, None)
            while next_kill is not None and next_kill <= clock.now:
                next_kill = next(pending_kills, None)
            continue
        if policy.due(schedule):
            save()
    return Outcome(clock.now - work, preemptions, saves)


def poisson(rng: random.Random, mtbf: float, horizon: float) -> List[float]:
    times, now = [], 0.0
    while now < horizon:
        now += rng.expovariate(1.0 / mtbf)
        times.append(now)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=float, default=4 * 3600.0, help="seconds of training")
    parser.add_argument("--step", type=float, default=1.0, help="seconds per training step")
    parser.add_argument("--save-cost", type=float, default=0.2)
    parser.add_argument("--restart", type=float, default=30.0, help="seconds per restart")
    parser.add_argument("--mtbf", type=float, default=1800.0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    optimum = young_daly_interval(args.save_cost, args.mtbf)
    policies = [Policy("due(): Young/Daly (%.1f s)" % optimum, lambda s: s.due())]
    for seconds in (5, 60, 300, 1800):
        policies.append(Policy("every %d s" % seconds, lambda s, t=seconds: s.due(every_seconds=t)))
    policies.append(Policy("every step", lambda s: s.due(every_steps=1)))

    draws = [poisson(random.Random(args.seed + t), args.mtbf, 4 * args.work) for t in range(args.trials)]
    print(
        "work %.0f s, step %.1f s, save cost %.2f s, restart %.0f s, MTBF %.0f s, %d trials "
        "(mean over trials; the same preemptions for every policy)\n"
        % (args.work, args.step, args.save_cost, args.restart, args.mtbf, args.trials)
    )
    print("| policy | preemptions | saves | lost, SIGKILL (s) | lost, SIGTERM handled (s) |")
    print("|---|---|---|---|---|")
    for policy in policies:
        hard = [simulate(policy, k, args.work, args.step, args.save_cost, args.restart, args.mtbf, False) for k in draws]
        soft = [simulate(policy, k, args.work, args.step, args.save_cost, args.restart, args.mtbf, True) for k in draws]
        print(
            "| %s | %.1f | %.0f | %.0f | %.0f |" % (
                policy.name,
                statistics.mean(o.preemptions for o in hard),
                statistics.mean(o.saves for o in hard),
                statistics.mean(o.lost for o in hard),
                statistics.mean(o.lost for o in soft),
            )
        )


if __name__ == "__main__":
    main()
