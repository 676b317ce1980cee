-- Compare-and-delete of a fill lock. KEYS[1] lock, ARGV[1] token. Returns 1 when released.
--
-- Changes state: yes (deletes the lock). Idempotent under re-send: yes, fenced by the token,
-- and it is sent with the client's usual attempts. A re-send of a run whose reply was lost
-- finds the lock gone (or taken by another token, which it leaves alone) and answers 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
