"""Delete the demo's topics so `make run` starts from nothing (used by deploy/local/run.sh)."""

from __future__ import annotations

import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient


async def main(bootstrap: str, app_id: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith((prefix, f"{app_id}-"))]
        if topics:
            await admin.delete_topics(topics)
            print(f"deleted {len(topics)} demo topic(s)", file=sys.stderr)
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
