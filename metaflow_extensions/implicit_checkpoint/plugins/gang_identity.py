"""Where a task of a multi-node (``@parallel``) step sits in its gang, from what Metaflow
tells it: the control task (node 0) learns it from its UBF context and the flow's
``num_parallel``; the other nodes from the ``MF_PARALLEL_*`` environment Metaflow sets
for them (locally, and on Kubernetes and AWS Batch alike)."""

import os
from typing import Optional

from metaflow.unbounded_foreach import UBF_CONTROL, UBF_TASK

from ..engine.errors import CheckpointException
from ..engine.gang import Gang
from .metaflow_internals import num_parallel
from .settings import SETTING_NAMES, settings


def gang_of_task(flow, ubf_context, task_id: str, step_name: str) -> Optional[Gang]:
    """The gang of this task of a ``@parallel`` step, or None for a gang of one."""
    num_nodes = num_parallel(flow) or int(os.environ.get("MF_PARALLEL_NUM_NODES", 1))
    if ubf_context == UBF_CONTROL:
        node_index, control_task_id = 0, str(task_id)
    elif ubf_context == UBF_TASK:
        try:
            node_index = int(os.environ["MF_PARALLEL_NODE_INDEX"])
            control_task_id = os.environ["MF_PARALLEL_CONTROL_TASK_ID"]
        except (KeyError, ValueError):
            raise CheckpointException(
                "@checkpoint on the @parallel step *%s*: this node's task %s was started "
                "without MF_PARALLEL_NODE_INDEX / MF_PARALLEL_CONTROL_TASK_ID in its "
                "environment, so it cannot tell which gang it checkpoints for."
                % (step_name, task_id)
            )
    else:
        return None
    if num_nodes <= 1:
        return None
    return Gang(node_index, num_nodes, control_task_id, settings().gang_timeout, SETTING_NAMES.gang_timeout)
