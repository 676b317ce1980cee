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
  return { raw, st or 'ready', sc or '-1', redis.call('HGET', K_LEASE, id) or '' }
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
  redis.call('ZREM', K_DEAD, id)
  if not raw then return 0 end
  local rec = cjson.decode(raw)
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
  drop_uniq(id, cjson.decode(raw))
  for _, st in ipairs(order) do redis.call('ZREM', sets[st], id) end
  redis.call('HDEL', K_LEASE, id)
  redis.call('HDEL', K_JOBS, id)
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
