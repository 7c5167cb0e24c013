"""A scorer pool that outlives one pipeline, so that several checkpointed pipelines load it once.

Ray Data starts a map_batches actor pool for each execution, and a checkpointed write is one
execution per output: eval's two sides (two outputs, two checkpoints) loaded the scorer once each.
Here the scorer's actors are plain Ray actors with the pool's size and resources, made once; each
pipeline hands its batches to them through a stage that holds no CPU."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from raypref.config import ScorerConf


class ScorerHost:
    """One scorer, built once, scoring the batches any pipeline sends it."""

    def __init__(self, cls: str, kwargs: dict):
        from raypref.registry import resolve

        self.scorer = resolve(cls)(**kwargs)

    def score(self, batch):
        return self.scorer(batch)

    def __ray_shutdown__(self):
        # Ray calls this on a graceful exit: the scorer's cleanup (a judge closes its http client) runs here,
        # not whenever the exit happens to drop this instance (it did in the tests; Ray does not promise it)
        self.scorer = None


class Tickets:
    """Numbers the stage actors: a host of their own each. An actor of its own, not a host's method, so
    that taking a number does not wait behind the batches queued on a host."""

    def __init__(self):
        self.numbers = {}

    def take(self, caller: str | None) -> int:
        """The caller's number, by its actor id: a stage actor that Ray restarted gets its number back (a new
        one would put it on a host another stage actor has). A caller outside an actor (None) gets a new one."""
        key = caller if caller is not None else ("not an actor", len(self.numbers))
        return self.numbers.setdefault(key, len(self.numbers))


@dataclass
class Hosts:
    actors: list  # ScorerHost actors
    tickets: object  # the Tickets actor that spreads the stage actors over them


class ToHosts:
    """A pipeline stage (map_batches callable class) that scores each batch on one of the shared
    hosts: stage actor k (by its ticket) sends all its batches to host k mod n. The stage has as many
    actors as there are hosts, so each has a host of its own, and Ray Data's balancing (a batch to the
    least busy stage actor) is the hosts' too. Each batch, images too, passes through the object store
    to the host and back."""

    def __init__(self, hosts: list, tickets):
        import ray

        number = ray.get(tickets.take.remote(ray.get_runtime_context().get_actor_id()))
        self.host = hosts[number % len(hosts)]

    def __call__(self, batch):
        import ray

        return ray.get(self.host.score.remote(batch))


@contextmanager
def scorer_hosts(s: ScorerConf, kwargs: dict):
    """``s.pool.concurrency`` ScorerHost actors of ``s`` (its constructor ``kwargs``), with the pool's
    CPUs and GPUs and Ray Data's restart settings for its map actors, and their Tickets, as Hosts; ended
    on exit, gracefully (each after the calls it holds), so that none outlives the stage in a sweep's
    shared Ray."""
    import ray

    p = s.pool
    host = ray.remote(ScorerHost).options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, max_restarts=-1,
                                          max_task_retries=-1)
    made = []
    try:  # an actor already made is ended even if making the next one fails
        made.append(ray.remote(Tickets).options(num_cpus=0).remote())
        made.extend(host.remote(s.cls, kwargs) for _ in range(p.concurrency))
        yield Hosts(actors=made[1:], tickets=made[0])
    finally:
        for h in made:  # not retried: a retry of the exit warns that the actor is unavailable
            h.__ray_terminate__.options(max_task_retries=0).remote()


def score_on(ds, hosts: Hosts, s: ScorerConf):
    """``ds`` scored by ``hosts`` in batches of the scorer pool's batch_size, as its own pool would."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(ToHosts, fn_constructor_kwargs={"hosts": hosts.actors, "tickets": hosts.tickets},
                          batch_format="pyarrow", batch_size=s.pool.batch_size,
                          compute=ActorPoolStrategy(size=len(hosts.actors)), num_cpus=0)
