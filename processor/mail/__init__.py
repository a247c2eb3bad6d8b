"""sendguard at the MTA: the Postfix policy service (`gateway`) and the rspamd connector
(`ingest`), and what both need to know about tenants (`tenants`)."""
