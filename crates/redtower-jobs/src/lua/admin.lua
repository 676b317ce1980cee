-- ADMIN: one operation per call (ARGV[2]).
-- Read only: time, counts, get, list.
-- Change state, each idempotent under re-send (the state after a re-send is the state after
-- one run; only the reply of the re-send can differ, as noted):
--   pause, resume: set or clear a flag.
--   remove: deletes the job; a re-send finds nothing and answers 0.
--   retry: moves a dead job back to ready; a re-send finds it no longer dead and answers 0
--     (it never runs the job a second time).
-- A bad record (not JSON, a field out of range) never fails a call: remove deletes it, retry
-- answers 0, get and list return the raw text for the client to show.
--   limits: stores the queue limits (meta fields, see quota.lua); dropping the per-group
--     limit puts held jobs back to ready and forgets the group counts. A re-send stores the
--     same values.
-- Read only: getlimits.
-- KEYS[13..17]: the flow keys (see flow.lua); KEYS[18..21]: the group keys (see quota.lua).
-- ARGV: ev_max, op, ...
-- Flows (see flow.lua): remove of a waiting parent drops its dependencies; remove of an
-- unfinished flow child tells its parent through the outbox ('removed').
local op = ARGV[2]
K_FWAIT, K_FDEPS, K_FOUT, K_FMSG, K_FUNSEAL = KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17]
K_GF, K_GHELD, K_GACT, K_GJOB = KEYS[18], KEYS[19], KEYS[20], KEYS[21]
if op == 'time' then return now end
if op == 'counts' then
  return { redis.call('ZCARD', K_SCHED), redis.call('ZCARD', K_READY),
    redis.call('ZCARD', K_ACTIVE), redis.call('ZCARD', K_DONE), redis.call('ZCARD', K_DEAD),
    redis.call('HGET', K_META, 'paused') == '1' and 1 or 0, redis.call('ZCARD', K_FWAIT) }
end

local sets = { active = K_ACTIVE, ready = K_READY, scheduled = K_SCHED, completed = K_DONE,
  dead = K_DEAD, waiting = K_FWAIT }
local order = { 'active', 'ready', 'scheduled', 'waiting', 'completed', 'dead' }

local function locate(id)
  for _, st in ipairs(order) do
    local sc = redis.call('ZSCORE', sets[st], id)
    if sc then return st, sc end
  end
  return nil, nil
end

if op == 'get' then
  local id = ARGV[3]
  local raw = redis.call('HGET', K_JOBS, id)
  if not raw then return {} end
  local st, sc = locate(id)
  return { raw, st or 'ready', sc or '-1', redis.call('HGET', K_LEASE, id) or '',
    redis.call('HGET', K_JOBS, 'p:' .. id) or '', redis.call('HGET', K_JOBS, 'r:' .. id) or '' }
elseif op == 'list' then
  local st, off, lim = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local ids
  if st == 'completed' or st == 'dead' then
    ids = redis.call('ZREVRANGE', sets[st], off, off + lim - 1, 'WITHSCORES')
  else
    ids = redis.call('ZRANGE', sets[st], off, off + lim - 1, 'WITHSCORES')
  end
  local out = {}
  for i = 1, #ids, 2 do
    local raw = redis.call('HGET', K_JOBS, ids[i])
    if raw then
      out[#out + 1] = ids[i]
      out[#out + 1] = raw
      out[#out + 1] = ids[i + 1]
      out[#out + 1] = (st == 'active' and redis.call('HGET', K_LEASE, ids[i])) or ''
    end
  end
  return out
elseif op == 'retry' then
  local id = ARGV[3]
  if not redis.call('ZSCORE', K_DEAD, id) then return 0 end
  local raw = redis.call('HGET', K_JOBS, id)
  if not raw then
    redis.call('ZREM', K_DEAD, id)
    return 0
  end
  local rec = decode(raw)
  if not rec then return 0 end
  redis.call('ZREM', K_DEAD, id)
  rec.attempt = 0
  rec.stalls = 0
  rec.fin = cjson.null
  if present(rec.uniq) then
    if redis.call('HSETNX', K_UNIQ, rec.uniq, id) == 0 then rec.uniq = cjson.null end
  end
  redis.call('HSET', K_JOBS, id, cjson.encode(rec))
  ready_add(id, rec)
  wake()
  emit('added', id, rec, nil)
  return 1
elseif op == 'remove' then
  local id = ARGV[3]
  local raw = redis.call('HGET', K_JOBS, id)
  if not raw then return 0 end
  local rec = decode(raw)
  if rec then
    drop_uniq(id, rec)
    if type(rec.fw) == 'table' then
      local fields = { id .. '\0#' }
      for _, k in ipairs(rec.fw) do fields[#fields + 1] = id .. '\0' .. k end
      multi('HDEL', K_FDEPS, fields)
      redis.call('ZREM', K_FUNSEAL, id)
    end
    if rec.fp ~= nil and not redis.call('ZSCORE', K_DONE, id)
      and not redis.call('ZSCORE', K_DEAD, id) then
      flow_out(id, rec, 'r', nil, nil)
    end
  end
  for _, st in ipairs(order) do redis.call('ZREM', sets[st], id) end
  redis.call('HDEL', K_LEASE, id)
  redis.call('HDEL', K_JOBS, id, 'p:' .. id, 'r:' .. id)
  if groups_done({ id }) then wake() end
  if rec and type(rec.g) == 'string' then
    redis.call('ZREM', K_GHELD, held_member(rec.g, id, rec.prio * PRIO + rec.seq))
  end
  return 1
elseif op == 'limits' then
  -- ARGV[3..6]: rl_n, rl_ms, conc, gconc; 0 = none.
  local names = { 'rl_n', 'rl_ms', 'conc', 'gconc' }
  for i, f in ipairs(names) do
    local v = tonumber(ARGV[2 + i])
    if v and v > 0 then redis.call('HSET', K_META, f, ARGV[2 + i]) else redis.call('HDEL', K_META, f) end
  end
  if not (tonumber(ARGV[3]) and tonumber(ARGV[3]) > 0) then redis.call('HDEL', K_META, 'tat') end
  if not (tonumber(ARGV[6]) and tonumber(ARGV[6]) > 0) then
    -- No per-group limit: held jobs go back to ready, counts are dropped.
    while true do
      local h = redis.call('ZRANGE', K_GHELD, 0, 99)
      if #h == 0 then break end
      redis.call('ZREM', K_GHELD, unpack(h))
      for _, m in ipairs(h) do
        local hid = string.match(m, '[^%z]*%z[^%z]*%z(.*)')
        local hraw = hid and redis.call('HGET', K_JOBS, hid)
        local hrec = hraw and decode(hraw)
        if hrec then ready_add(hid, hrec) end
      end
    end
    redis.call('DEL', K_GACT, K_GJOB)
  end
  wake()
  return 1
elseif op == 'getlimits' then
  return redis.call('HMGET', K_META, 'rl_n', 'rl_ms', 'conc', 'gconc')
elseif op == 'pause' then
  redis.call('HSET', K_META, 'paused', '1')
  return 1
elseif op == 'resume' then
  redis.call('HDEL', K_META, 'paused')
  wake()
  return 1
end
return redis.error_reply('unknown op ' .. tostring(op))
