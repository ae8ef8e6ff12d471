"""The live source: Databento's live gateway to the raw MBO topic, with nothing lost or repeated.

- `cursor`: what each instrument has delivered (Databento's recovery rule), and the filter that
  drops what a resubscription sends again.
- `resume`: that cursor read back from the raw topic's tail when the source process restarts;
  the topic is the source's only checkpoint.
- `source`: the session loop around `databento.Live`: connect, subscribe, reconnect with
  backoff, gap records, metrics.
- `gateway`: a stand-in for Databento's gateway on 127.0.0.1, speaking the protocol the real
  client expects, for tests and the demo.
"""
