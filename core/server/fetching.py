"""Image URLs of a request, downloaded on the event loop: fair between requests, cancellable, bounded.

Every fetch runs under :func:`lychee_rerank.core.media.afetch_image_url` (the media policy's address checks,
redirect checks, byte caps and time limit), on one shared async HTTP client, without a thread, so a
request that gives up (deadline passed, client gone) cancels its downloads and their connections close.

Two caps keep one request from delaying another:

- per request, at most ``per_request`` downloads run at once; the rest of its URLs wait their turn;
- over the whole service, at most ``total`` run at once, and a free slot goes to the waiting *requests*
  in turn, not to the oldest waiting download. A request with 1,000 slow URLs holds at most its share,
  so another request's single URL waits at most until one running download ends, which is within one
  fetch timeout.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

import httpx

from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.media import MediaPolicy, afetch_image_url, async_fetch_client
from lychee_rerank.core.sources import is_url


class FairSlots:
    """At most ``limit`` holders at once; when all are taken, freed slots go to the waiting owners in turn.

    Asyncio only (one event loop). An owner is any hashable object, here one per request.

    Example:
        >>> slots = FairSlots(1)
        >>> async def hold(owner): await slots.acquire(owner); slots.release()
        >>> asyncio.run(hold("a"))
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the slot limit must be at least 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._waiting: OrderedDict[object, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self.limit - self._free

    async def acquire(self, owner: object) -> None:
        """Waits for a slot; cancelling the wait gives nothing up (a slot handed over meanwhile is passed on)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as the wait was cancelled: hand it on
            else:
                queue = self._waiting.get(owner)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[owner]
            raise

    def release(self) -> None:
        """Frees a slot: it goes to the next owner in turn that is waiting, else back to the pool."""
        while self._waiting:
            owner, queue = next(iter(self._waiting.items()))
            waiter = queue.popleft()
            if queue:
                self._waiting.move_to_end(owner)  # its next download waits behind the other owners'
            else:
                del self._waiting[owner]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class ImageFetcher:
    """Downloads the http(s) images of requests under a media policy and the two caps above.

    Args:
        policy: The service's media policy (what may be fetched, how much, how long).
        per_request: Downloads one request may run at once.
        total: Downloads the service runs at once.
    """

    def __init__(self, policy: MediaPolicy, *, per_request: int, total: int) -> None:
        if per_request < 1 or total < 1:
            raise ValueError(f"fetch caps must be at least 1, got per_request={per_request}, total={total}")
        self.policy = policy
        self.per_request = per_request
        self.slots = FairSlots(total)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = async_fetch_client(self.policy, max_connections=self.slots.limit)
        return self._client

    async def aclose(self) -> None:
        """Closes the shared HTTP client (the service's shutdown)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, query: Query, documents: list[Document]) -> tuple[Query, list[Document]]:
        """The query and documents with every http(s) image replaced by its downloaded bytes.

        Each distinct URL is fetched once. The first failure cancels the request's other downloads.
        Scores do not change: the engine identifies images by the bytes' content either way.

        Raises:
            ImageError: The first refused or failed download, located (``document 3: ...``).
        """
        items: list[tuple[str, Query | Document]] = [("query", query)]
        items += [(f"document {index}", document) for index, document in enumerate(documents)]
        urls = list(dict.fromkeys(str(item.image) for _, item in items if is_url(item.image)))
        if not urls:
            return query, documents
        owner = object()
        mine = asyncio.Semaphore(self.per_request)

        async def one(url: str) -> bytes:
            async with mine:
                await self.slots.acquire(owner)
                try:
                    return await afetch_image_url(url, self.policy, self._http())
                finally:
                    self.slots.release()

        tasks = {url: asyncio.ensure_future(one(url)) for url in urls}
        try:
            await asyncio.gather(*tasks.values())
        except ImageError as error:
            url = next(url for url, task in tasks.items() if _failed_with(task, error))
            where = next(where for where, item in items if is_url(item.image) and str(item.image) == url)
            raise error.located(where) from error.__cause__
        finally:
            for task in tasks.values():
                task.cancel()  # after a failure or a cancellation, nothing keeps downloading
        fetched = {url: task.result() for url, task in tasks.items()}

        def swap(item: Any) -> Any:
            return replace(item, image=fetched[str(item.image)]) if is_url(item.image) else item

        return swap(query), [swap(document) for document in documents]


def _failed_with(task: asyncio.Task[bytes], error: BaseException) -> bool:
    return task.done() and not task.cancelled() and task.exception() is error
