-- Changes state: yes (deletes one subject's counters).
-- Idempotent under re-send: yes (deleting what is already gone changes nothing).
-- redtower rate limit: forget one subject's counters of the given policies, for
-- `RedisStore::reset`. A script rather than a plain DEL so that it goes through the same
-- slot routing and NOSCRIPT handling as the other scripts. KEYS: the counter keys (one slot).
return redis.call('DEL', unpack(KEYS))
