"""The lineage of a checkpoint: the chain of checkpoints it descends from.

Every manifest records ``parent``: the key of the checkpoint its attempt had loaded
when it saved (None when the attempt started fresh). Following parents key by key
gives the chain a resumed task descends from, across the attempts of a task and, with
eager resume, across runs. A parent may be gone (removed by retention or gc) or
damaged; the walk then ends at it and says why, instead of failing.
"""

from dataclasses import dataclass
from typing import List, Optional

from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound
from .keys import CheckpointKey
from .manifest import public_view
from .store import CheckpointStore

#: Longest chain followed; a run resumed more often than this shows its newest links.
MAX_LINKS = 100


@dataclass(frozen=True)
class LineageLink:
    """One checkpoint of a lineage chain.

    ``manifest`` is its public manifest, or None when it could not be read; ``problem``
    then says why (the chain goes no further back than such a link).
    """

    key: str
    manifest: Optional[dict] = None
    problem: Optional[str] = None

    @property
    def readable(self) -> bool:
        return self.manifest is not None


def lineage(
    store: CheckpointStore, key: Optional[str], limit: int = MAX_LINKS
) -> List[LineageLink]:
    """The chain that ends at checkpoint ``key``: oldest ancestor first, ``key`` last.

    [] when ``key`` is None. Stops cleanly at a missing, damaged or malformed parent
    (that link is included, with its ``problem``), at a repeated key, and after
    ``limit`` links.
    """
    chain: List[LineageLink] = []
    seen = set()
    current = key
    while current is not None and len(chain) < limit:
        if current in seen:
            chain.append(LineageLink(current, problem="already in this chain (a cycle)"))
            break
        seen.add(current)
        link = _read_link(store, current)
        chain.append(link)
        if not link.readable:
            break
        current = link.manifest.get("parent")
    chain.reverse()
    return chain


def _read_link(store: CheckpointStore, key: str) -> LineageLink:
    try:
        manifest = store.read_manifest(CheckpointKey.parse(key))
    except CheckpointNotFound:
        return LineageLink(key, problem="no longer stored (removed by retention or gc)")
    except CheckpointCorrupted as ex:
        return LineageLink(key, problem="unreadable: %s" % ex)
    except CheckpointException as ex:
        return LineageLink(key, problem="not readable: %s" % ex)
    except Exception as ex:  # storage errors: the chain shows it rather than failing
        return LineageLink(key, problem="could not be read: %s: %s" % (type(ex).__name__, ex))
    return LineageLink(key, manifest=public_view(manifest))
