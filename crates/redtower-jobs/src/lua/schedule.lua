-- SCHEDULE. Job schedulers: upsert, remove, list, due, fire. KEYS[13] `:sspec` (HASH id →
-- spec JSON), KEYS[14] `:snext` (ZSET id → next tick ms; absent when finished), KEYS[15]
-- `:sstate` (HASH id → '<version> <count>'), then for fire one tick marker per tick
-- (`:tick:<scheduler>:<tick ms>`). ARGV[2] is the operation.
-- Changes state: upsert (spec, state, next), remove (all three), fire (jobs, state, next).
-- Idempotent under re-send:
-- * upsert: a re-send finds the spec it stored and changes nothing.
-- * remove: a re-send finds nothing to delete.
-- * fire: compare-and-set on the version and the next tick read by the caller; the first run
--   moves the next tick on, so a re-send fails the check and adds nothing (answers false). Each
--   tick's job also sets its tick marker for `keep_ms`, and a tick whose marker exists adds no
--   job: a replay of an old fire adds nothing either.
local K_SPEC, K_NEXT, K_STATE = KEYS[13], KEYS[14], KEYS[15]
local op = ARGV[2]

local function state_of(id)
  local s = redis.call('HGET', K_STATE, id)
  if not s then return 0, 0 end
  local v, c = string.match(s, '^(%d+) (%d+)$')
  return tonumber(v) or 0, tonumber(c) or 0
end

local function row(id)
  local v, c = state_of(id)
  local score = redis.call('ZSCORE', K_NEXT, id)
  return { id, redis.call('HGET', K_SPEC, id) or '', n2s(v), n2s(c), score or '' }
end

if op == 'upsert' then
  -- `first`: a tick in ms, `now` (this script's time) or '' (finished at once).
  local id, spec, first = ARGV[3], ARGV[4], ARGV[5]
  if redis.call('HGET', K_SPEC, id) == spec then return 0 end
  if first == 'now' then first = now_s end
  local v = state_of(id)
  redis.call('HSET', K_SPEC, id, spec)
  redis.call('HSET', K_STATE, id, n2s(v + 1) .. ' 0')
  if first ~= '' then
    redis.call('ZADD', K_NEXT, first, id)
  else
    redis.call('ZREM', K_NEXT, id)
  end
  return 1
elseif op == 'remove' then
  local id = ARGV[3]
  redis.call('ZREM', K_NEXT, id)
  redis.call('HDEL', K_STATE, id)
  return redis.call('HDEL', K_SPEC, id)
elseif op == 'list' then
  local ids = redis.call('HKEYS', K_SPEC)
  table.sort(ids)
  local out = {}
  for _, id in ipairs(ids) do out[#out + 1] = row(id) end
  return out
elseif op == 'due' then
  local ids = redis.call('ZRANGEBYSCORE', K_NEXT, '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[3]))
  local out = { now_s, {}, '' }
  for _, id in ipairs(ids) do out[2][#out[2] + 1] = row(id) end
  local later = redis.call('ZRANGEBYSCORE', K_NEXT, '(' .. now_s, '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  if later[2] then out[3] = later[2] end
  return out
end

-- fire. ARGV: 3 id, 4 version, 5 expected next, 6 new next | '', 7 keep_ms, 8 name,
-- 9 record tail, 10 priority, 11 n ticks, then the ticks; KEYS[16..] their markers.
local id = ARGV[3]
local v, c = state_of(id)
if v ~= tonumber(ARGV[4]) then return false end
local score = redis.call('ZSCORE', K_NEXT, id)
if not score or tonumber(score) ~= tonumber(ARGV[5]) then return false end
local n = tonumber(ARGV[11])
for i = 1, n do
  -- A tick later than this node's clock (a failover to a node whose clock is behind): not yet.
  if tonumber(ARGV[11 + i]) > now then return false end
end
local keep, name, tail, prio = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
local out = {}
for i = 1, n do
  local marker = KEYS[15 + i]
  local jid = redis.call('GET', marker)
  if not jid then
    local seq = redis.call('INCR', K_SEQ)
    jid = tostring(seq)
    local rec = { name = name, attempt = 0, prio = prio, seq = seq }
    redis.call('HSET', K_JOBS, jid,
      '{"id":"' .. jid .. '","seq":' .. seq .. ',"created":' .. now_s .. ',' .. tail)
    ready_add(jid, rec)
    emit('added', jid, rec, nil)
    redis.call('SET', marker, jid, 'PX', keep)
  end
  out[#out + 1] = jid
end
if n > 0 then wake() end
redis.call('HSET', K_STATE, id, n2s(v) .. ' ' .. n2s(c + n))
if ARGV[6] ~= '' then
  redis.call('ZADD', K_NEXT, ARGV[6], id)
else
  redis.call('ZREM', K_NEXT, id)
end
return out
