"""What the cluster client reads from the voters' answers: the leader its group agrees on,
the one acting manager, a settled group; disagreement, deposed leaders and silent,
standby or stopped nodes."""

from __future__ import annotations

from colony.shared.cluster import Statuses, service_info
from colony.shared.messages import ConsensusStatus, LeaseView, VoterView

GROUP = ["a", "b", "c"]


def view(
    node: str,
    role: str = "follower",
    leader: str | None = "a",
    term: int = 2,
    holder: str = "a",
    epoch: int = 3,
    lag: int = 0,
    **more,
) -> ConsensusStatus:
    voters = [VoterView(node, True)] + [
        VoterView(n, True, lag=lag if role == "leader" else None) for n in GROUP if n != node
    ]
    lease = LeaseView("manager", holder, epoch, 1.0, 5.0, 0.1)
    acting = role == "leader" and holder == node
    return ConsensusStatus(
        node=node, role=role, leader=leader, term=term, commit_index=9, applied_index=9,
        has_quorum=role == "leader", voters=voters, manager=lease, acting=acting, **more,
    )  # fmt: skip


def whole(**changes: ConsensusStatus | None) -> Statuses:
    of = {"a": view("a", "leader"), "b": view("b"), "c": view("c")}
    return Statuses({**of, **changes})


def test_the_leader_is_the_one_its_answering_group_follows_in_its_term():
    assert whole().leader().node == "a"
    assert whole(c=None).leader().node == "a"  # silent: not asked to agree
    assert whole(c=view("c", "candidate", None, term=3)).leader() is None
    assert whole(c=view("c", leader="b")).leader() is None
    assert whole(c=view("c", "standby", None, term=0)).leader().node == "a"
    assert whole(c=view("c", stopped="conflicting log")).leader().node == "a"
    assert Statuses({"a": None, "b": view("b"), "c": view("c")}).leader() is None


def test_a_deposed_leader_that_does_not_know_it_yet_is_not_the_leader():
    deposed = view("a", "leader", term=2)
    new = view("b", "leader", leader="b", term=3, holder="b", epoch=4)
    follower = view("c", leader="b", term=3, holder="b", epoch=4)
    statuses = Statuses({"a": deposed, "b": new, "c": follower})
    assert statuses.leader() is None  # a answers, and does not follow b: not agreed yet
    assert Statuses({"a": None, "b": new, "c": follower}).leader().node == "b"


def test_the_manager_is_the_one_acting_node_with_its_group_agreeing_on_the_lease():
    chief = whole().manager()
    assert (chief.node, chief.epoch) == ("a", 3)
    assert whole(c=view("c", epoch=2)).manager() is None  # c has not applied the grant
    assert whole(c=None).manager().node == "a"
    assert whole(a=view("a", "leader", holder="")).manager() is None  # nobody acting
    two = whole(b=view("b", "leader", leader="b", holder="b"))
    assert two.manager() is None  # two claim to act: not agreed


def test_a_settled_group_is_all_connected_caught_up_and_answering():
    assert whole().settled(3).node == "a"
    assert whole().settled(5) is None
    assert whole(a=view("a", "leader", lag=4)).settled() is None
    assert whole(c=None).settled() is None
    assert whole(c=None).leader() is not None


def test_a_description_names_every_node_as_it_answered():
    said = whole(b=None, c=view("c", "standby", None)).describe()
    assert said == "a leader term 2, lease a epoch 3 acting; b unreachable; c standby"


def test_only_colony_services_are_read_from_discovery_replies():
    info = b'{"name": "colony-monitor", "id": "x1", "version": "0.1", "metadata": {"node": "n"}}'
    found = service_info(info)
    assert (found.service, found.node, found.node_name, found.endpoints) == (
        "monitor", "n", "n", ()
    )  # fmt: skip
    assert service_info(b'{"name": "other", "metadata": {"node": "n"}}') is None
    assert service_info(b'{"name": "colony-x", "metadata": null}') is None
    assert service_info(b"[1, 2]") is None
    assert service_info(b"{") is None
