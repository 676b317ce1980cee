-- Changes state: yes (removes one lease).
-- Idempotent under re-send: yes (removing a lease already gone changes nothing).
-- redtower rate limit: give a concurrency lease back, for `RedisStore::release`.
-- KEYS[1]: the subject's lease set; ARGV[1]: the token.
return redis.call('ZREM', KEYS[1], ARGV[1])
