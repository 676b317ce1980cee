-- Changes state: yes, only to prune (deletes expired or revoked records and stale index
-- entries met on the way). Re-send: idempotent (pruning twice prunes nothing more).
-- Work: at most ARGV[2] index entries (the per-user cap; the index is kept at the cap by
-- create), the most recent ones.
-- KEYS[1] index, KEYS[2] epoch; ARGV record key prefix, max sessions per user
-- Returns {handle, created, last seen, expiry, meta} per live session; prunes the rest.
local ik, gk = KEYS[1], KEYS[2]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
local g = redis.call('GET', gk)
local out = {}
for _, h in ipairs(redis.call('ZRANGE', ik, -tonumber(ARGV[2]), -1)) do
  local rk = ARGV[1] .. h
  local f = redis.call('HMGET', rk, 'c', 'a', 'e', 'm', 'g', 'x')
  if not f[1] then
    redis.call('ZREM', ik, h)
  elseif f[5] ~= g or now >= tonumber(f[6]) or now >= tonumber(f[3]) then
    redis.call('DEL', rk)
    redis.call('ZREM', ik, h)
  else
    table.insert(out, {h, f[1], f[2], f[3], f[4] or ''})
  end
end
fix_index(ik)
return out
