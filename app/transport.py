"""The Kafka transport, with offsets never committed ahead of the table state they cover.

Under processing_guarantee="exactly_once", faust-streaming 0.15 commits a transaction's
offsets without first draining its producer buffer, where table changelog writes wait
(`send_soon`). Those writes then join the *next* transaction, after the offsets that cover
them: a worker killed in between restarts from the committed offsets with state that lacks
them, and the updates are lost. (At-least-once flushes first; see `Consumer._commit_offsets`.)
Flushing before the commit puts every changelog write in the transaction of the offsets it
belongs to, so state, outputs and offsets commit together.
"""

from __future__ import annotations

from collections.abc import Mapping

import faust
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TransportT


class FlushingTransactionManager(TransactionManager):
    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        await self.app.producer.flush()
        return await super().commit(offsets, start_new_transaction=start_new_transaction)


class Transport(aiokafka_driver.Transport):
    TransactionManager = FlushingTransactionManager


class App(faust.App):
    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)
