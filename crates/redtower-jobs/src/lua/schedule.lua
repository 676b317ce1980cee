-- SCHEDULE. Job schedulers: upsert, remove, list, due, fire. KEYS[13] `:sspec` (HASH id →
-- spec JSON), KEYS[14] `:snext` (ZSET id → next tick ms; absent when finished), KEYS[15]
-- `:sstate` (HASH id → '<version> <count>'), then for fire one tick marker per tick
-- (`:tick:<scheduler>:<tick ms>`). ARGV[2] is the operation.
-- Changes state: upsert (spec, state, next; the first tick's job for `now`), remove (all
-- three), fire (jobs, state, next).
-- Idempotent under re-send:
-- * upsert: the call carries a marker key (KEYS[16], `:ups:<random id>`); the first run keeps
--   its answers there for `call_keep_ms` and a re-send is answered from it, changing nothing.
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

-- Adds the job of one tick (record, ready entry, its `added` event in `events`): its id.
local events = {}
local function add_tick_job(name, tail, prio)
  local seq = redis.call('INCR', K_SEQ)
  local jid = tostring(seq)
  redis.call('HSET', K_JOBS, jid,
    '{"id":"' .. jid .. '","seq":' .. seq .. ',"created":' .. now_s .. ',' .. tail)
  ready_add(jid, { prio = tonumber(prio), seq = seq })
  event_fields(events, jid, name, '0')
  return jid
end

local function flush_tick_jobs()
  if #events > 0 then
    xadd_batched('added', events)
    wake()
  end
end

if op == 'upsert' then
  -- ARGV[3] upserts, applied in order, ARGV[4] call_keep_ms, then each upsert (id, spec,
  -- first, name, tail, priority, step): `first` is a tick in ms, '' (finished at once) or
  -- `now`: this script's time, whose job (name, record tail, priority) is added here, the next
  -- tick `step` ms later ('': finished). Answers 1 (changed) or 0 per upsert.
  local prev = redis.call('GET', KEYS[16])
  if prev then
    local out = {}
    for a in string.gmatch(prev, '%d') do out[#out + 1] = tonumber(a) end
    return out
  end
  local out = {}
  for i = 1, tonumber(ARGV[3]) do
    local b = 7 * i - 2
    local id, spec, first = ARGV[b], ARGV[b + 1], ARGV[b + 2]
    if redis.call('HGET', K_SPEC, id) == spec then
      out[i] = 0
    else
      local v, count = state_of(id), 0
      if first == 'now' then
        add_tick_job(ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
        count = 1
        first = ARGV[b + 6] == '' and '' or n2s(now + tonumber(ARGV[b + 6]))
      end
      redis.call('HSET', K_SPEC, id, spec)
      redis.call('HSET', K_STATE, id, n2s(v + 1) .. ' ' .. count)
      if first ~= '' then
        redis.call('ZADD', K_NEXT, first, id)
      else
        redis.call('ZREM', K_NEXT, id)
      end
      out[i] = 1
    end
  end
  flush_tick_jobs()
  redis.call('SET', KEYS[16], table.concat(out), 'PX', ARGV[4])
  return out
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

-- fire: the fires of one scheduler pass, each applied on its own. ARGV: 3 keep_ms, 4 number of
-- fires, then per fire: id, version, expected next, new next | '', name, record tail,
-- priority, n ticks, the ticks; KEYS[16..] the ticks' markers, fire after fire. Answers per
-- fire its jobs' ids, or false when its compare-and-set failed (nothing of it changed).
local keep, nf = ARGV[3], tonumber(ARGV[4])
local a, m = 5, 16
local out = {}

-- One fire: its arguments from ARGV[a], its markers from KEYS[m].
local function fire(a, m)
  local id = ARGV[a]
  local v, c = state_of(id)
  if v ~= tonumber(ARGV[a + 1]) then return false end
  local score = redis.call('ZSCORE', K_NEXT, id)
  if not score or tonumber(score) ~= tonumber(ARGV[a + 2]) then return false end
  local n = tonumber(ARGV[a + 7])
  for i = 1, n do
    -- A tick later than this node's clock (a failover to a node whose clock is behind): not
    -- yet.
    if tonumber(ARGV[a + 7 + i]) > now then return false end
  end
  local name, tail, prio = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local ids = {}
  for i = 1, n do
    local marker = KEYS[m + i - 1]
    local jid = redis.call('GET', marker)
    if not jid then
      jid = add_tick_job(name, tail, prio)
      redis.call('SET', marker, jid, 'PX', keep)
    end
    ids[#ids + 1] = jid
  end
  redis.call('HSET', K_STATE, id, n2s(v) .. ' ' .. n2s(c + n))
  if ARGV[a + 3] ~= '' then
    redis.call('ZADD', K_NEXT, ARGV[a + 3], id)
  else
    redis.call('ZREM', K_NEXT, id)
  end
  return ids
end

for f = 1, nf do
  local n = tonumber(ARGV[a + 7])
  out[f] = fire(a, m)
  a, m = a + 8 + n, m + n
end
flush_tick_jobs()
return out
