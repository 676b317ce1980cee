-- Reads the ban list and its version together (a consistent snapshot). KEYS[1] the version,
-- KEYS[2] the list. Changes state: no (read-only; safe to re-send).
return {redis.call('GET', KEYS[1]) or '', redis.call('HGETALL', KEYS[2])}
