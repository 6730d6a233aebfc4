"""Management.query_all: every page of a kind, each object with the log index its page
was read at (a fake bus answers the pages: no database needed to walk them)."""

from __future__ import annotations

from colony.shared.management import Management
from colony.shared.messages import QueryReply, QueryRequest, Stored


class Pages:
    """Answers a query with the objects after `after`, two per page, each page read one
    log index later than the one before."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.asked: list[QueryRequest] = []

    async def request(self, subject, request: QueryRequest, timeout: float) -> QueryReply:
        self.asked.append(request)
        left = [i for i in self.ids if i > request.after]
        page = left[:2]
        return QueryReply(
            key=request.key,
            value=None,
            version=0,
            index=10 + len(self.asked),
            objects=[Stored(i, 1, {"id": i}) for i in page],
            more=len(left) > 2,
        )


async def test_walks_every_page_and_says_where_each_object_was_read():
    bus = Pages(["a", "b", "c", "d", "e"])
    listing = await Management(bus, ["v1"]).query_all("instances", {"node": "n1"}, stale=True)
    assert [s.id for s in listing.objects] == ["a", "b", "c", "d", "e"]
    assert [(index, s.id) for index, s in listing.each()] == [
        (11, "a"),
        (11, "b"),
        (12, "c"),
        (12, "d"),
        (13, "e"),
    ]
    assert listing.index == 11
    assert [r.after for r in bus.asked] == ["", "b", "d"]
    assert all(r.where == {"node": "n1"} and r.stale and r.kind == "instances" for r in bus.asked)


async def test_nothing_found_still_says_when_it_was_read():
    listing = await Management(Pages([]), ["v1"]).query_all("jobs")
    assert listing.objects == [] and listing.index == 11
