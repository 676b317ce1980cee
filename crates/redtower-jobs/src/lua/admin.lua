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
-- ARGV: ev_max, op, ...
local op = ARGV[2]
if op == 'time' then return now end
if op == 'counts' then
  return { redis.call('ZCARD', K_SCHED), redis.call('ZCARD', K_READY),
    redis.call('ZCARD', K_ACTIVE), redis.call('ZCARD', K_DONE), redis.call('ZCARD', K_DEAD),
    redis.call('HGET', K_META, 'paused') == '1' and 1 or 0 }
end

local sets = { active = K_ACTIVE, ready = K_READY, scheduled = K_SCHED, completed = K_DONE,
  dead = K_DEAD }
local order = { 'active', 'ready', 'scheduled', 'completed', 'dead' }

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
  if rec then drop_uniq(id, rec) end
  for _, st in ipairs(order) do redis.call('ZREM', sets[st], id) end
  redis.call('HDEL', K_LEASE, id)
  redis.call('HDEL', K_JOBS, id, 'p:' .. id, 'r:' .. id)
  return 1
elseif op == 'pause' then
  redis.call('HSET', K_META, 'paused', '1')
  return 1
elseif op == 'resume' then
  redis.call('HDEL', K_META, 'paused')
  wake()
  return 1
end
return redis.error_reply('unknown op ' .. tostring(op))
