"""What a notebook sees of a ResumeFlow task (tests/flows/resume_flow.py), read from a
separate process: shared by the local and the S3 resume tests."""


def task_state(world, run_id):
    """Data, checkpoint listings and newest values of ResumeFlow's train task 2 in ``run_id``."""
    return world.python(
        """
        import json
        from metaflow import Checkpoint, Task, namespace
        namespace(None)
        task = Task("ResumeFlow/%s/train/2")
        cp = Checkpoint()
        def summary(arts):
            return [[a.version, a.attempt, a.name, a.metadata] for a in arts]
        print(json.dumps({
            "count": task.data.count,
            "attempts_seen": task.data.attempts_seen,
            "resumed_from": task.data.resumed_from,
            "weights_sum": float(task.data.weights.sum()),
            "all": summary(cp.list(task=task)),
            "attempt0": summary(cp.list(task=task.pathspec, attempt=0)),
            "attempt1": summary(cp.list(task=task.pathspec, attempt=1)),
            "even": summary(cp.list(task=task.pathspec, name="even")),
            "loaded_metadata": [Task(task.pathspec, attempt=n).metadata_dict.get("checkpoint-loaded")
                                for n in range(task.current_attempt + 1)],
            "newest_values": {k: (v.tolist() if hasattr(v, "tolist") else v)
                              for k, v in cp.load(cp.list(task=task)[-1], fields=["count", "attempts_seen"]).items()},
        }))
        """
        % run_id
    )
