-- FLOW: parents that run after their children, coordinated without a script that touches two
-- queues. Every op touches one queue's keys only (KEYS[13..17] = :fwait, :fdeps, :fout, :fmsg,
-- :funseal of that queue; KEYS[18] an idempotency marker for `parent`).
-- Keys:
--   :fwait   ZSET parent id -> time added: parents waiting for children
--   :fdeps   HASH '<parent id>\0<child key>' -> '?<policy>' while pending, else the outcome as
--            JSON; '<parent id>\0#' -> children not resolved yet
--   :funseal ZSET parent id -> time added: parents whose children may not all be added yet
--            (the child specs are in the parent record's `fspec` until `seal`)
--   :fout    ZSET message id -> time it may be (re)delivered: the outbox of a child queue
--   :fmsg    HASH message id -> message JSON { q, p, k, i, s, e, v }
-- Ops, each changing state and safe under re-send:
--   parent: adds a waiting parent. A re-send of the call, or an add with the same idempotency
--     key within the window, finds the marker KEYS[18] and answers the first id (code 2).
--   seal: drops the parent's child specs; a re-send finds it sealed (no-op).
--   unsealed: read only (the parents unsealed for longer than a bound, with their specs).
--   take: leases due outbox messages by moving their next delivery time `lease_ms` ahead; a
--     re-send leases the same (or later) ones again: a message is only ever delivered again.
--   deliver: resolves each message's child in its parent, once: a child whose field is no
--     longer '?<policy>' (already resolved) or whose parent no longer waits is skipped, so a
--     re-send or a re-delivery after a crash changes nothing.
--   ack: deletes delivered messages; a re-send finds them gone.
-- ARGV: ev_max, op, ...
K_FWAIT, K_FDEPS, K_FOUT, K_FMSG, K_FUNSEAL = KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17]
local op = ARGV[2]

-- Removes a parent's pending dependency fields (its child keys are in rec.fw).
local function drop_deps(pid, rec)
  local fields = { pid .. '\0#' }
  if type(rec.fw) == 'table' then
    for _, k in ipairs(rec.fw) do fields[#fields + 1] = pid .. '\0' .. k end
  end
  multi('HDEL', K_FDEPS, fields)
  redis.call('ZREM', K_FWAIT, pid)
  redis.call('ZREM', K_FUNSEAL, pid)
end

if op == 'parent' then
  -- ARGV: ev_max, op, keep_ms, name, record_tail, priority, n, spec, n x (key, policy)
  local K_IDEM = KEYS[18]
  local again = redis.call('GET', K_IDEM)
  if again then return { again, 2 } end
  local n = tonumber(ARGV[7])
  local seq = redis.call('INCR', K_SEQ)
  local id = tostring(seq)
  local keys, fields = {}, { id .. '\0#', n2s(n) }
  for i = 0, n - 1 do
    local k, pol = ARGV[9 + i * 2], ARGV[10 + i * 2]
    keys[#keys + 1] = k
    fields[#fields + 1] = id .. '\0' .. k
    fields[#fields + 1] = '?' .. pol
  end
  local head = cjson.encode({ id = id, seq = seq, created = now, fw = keys, fspec = ARGV[8] })
  -- The record: the fields above, then the caller's tail (name, data, attempts, ...).
  redis.call('HSET', K_JOBS, id, string.sub(head, 1, -2) .. ',' .. ARGV[5])
  multi('HSET', K_FDEPS, fields)
  redis.call('ZADD', K_FWAIT, now_s, id)
  redis.call('ZADD', K_FUNSEAL, now_s, id)
  redis.call('SET', K_IDEM, id, 'PX', ARGV[3])
  emit('added', id, { name = ARGV[4], attempt = 0 }, nil)
  return { id, 1 }
elseif op == 'seal' then
  local pid = ARGV[3]
  if redis.call('ZREM', K_FUNSEAL, pid) == 1 then
    local raw = redis.call('HGET', K_JOBS, pid)
    local rec = raw and decode(raw)
    if rec and rec.fspec then
      rec.fspec = nil
      redis.call('HSET', K_JOBS, pid, cjson.encode(rec))
    end
  end
  return 1
elseif op == 'unsealed' then
  -- ARGV: ev_max, op, older_than_ms, limit
  local ids = redis.call('ZRANGEBYSCORE', K_FUNSEAL, '-inf', n2s(now - tonumber(ARGV[3])),
    'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  for _, pid in ipairs(ids) do
    local raw = redis.call('HGET', K_JOBS, pid)
    local rec = raw and decode(raw)
    if rec and type(rec.fspec) == 'string' then
      out[#out + 1] = { pid, rec.fspec }
    else
      redis.call('ZREM', K_FUNSEAL, pid)
    end
  end
  return out
elseif op == 'take' then
  -- ARGV: ev_max, op, lease_ms, limit
  local ids = redis.call('ZRANGEBYSCORE', K_FOUT, '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  local again = n2s(now + tonumber(ARGV[3]))
  for _, mid in ipairs(ids) do
    local m = redis.call('HGET', K_FMSG, mid)
    if m then
      redis.call('ZADD', K_FOUT, again, mid)
      out[#out + 1] = { mid, m }
    else
      redis.call('ZREM', K_FOUT, mid)
    end
  end
  return out
elseif op == 'ack' then
  for i = 3, #ARGV do
    redis.call('ZREM', K_FOUT, ARGV[i])
    redis.call('HDEL', K_FMSG, ARGV[i])
  end
  return 1
elseif op == 'deliver' then
  -- ARGV: ev_max, op, keep_dead_n, child queue, n, n x (parent id, key, child id, status,
  --       error, result); status: c completed, d dead, r removed.
  -- Returns per message: 0 skipped, 1 recorded, 2 parent released, 3 parent failed.
  local keep_dead_n = tonumber(ARGV[3])
  local cq = ARGV[4]
  local n = tonumber(ARGV[5])
  local out = {}
  for i = 0, n - 1 do
    local b = 6 + i * 6
    local pid, key, cid, st, err, res =
      ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
    local code = 0
    local f = pid .. '\0' .. key
    local cur = redis.call('ZSCORE', K_FWAIT, pid) and redis.call('HGET', K_FDEPS, f)
    local raw = cur and string.sub(cur, 1, 1) == '?' and redis.call('HGET', K_JOBS, pid)
    local rec = raw and decode(raw)
    if rec then
      local pol = string.sub(cur, 2, 2)
      local why = nil
      if st ~= 'c' then
        if st == 'r' then why = 'was removed' else why = 'failed: ' .. err end
      end
      if st == 'c' then
        local o = { s = 'c', q = cq, i = cid }
        if res ~= '' then o.v = res end
        redis.call('HSET', K_FDEPS, f, cjson.encode(o))
        code = 1
      elseif pol == 'f' then
        drop_deps(pid, rec)
        rec.fw = nil
        rec.fspec = nil
        rec.err = 'child `' .. key .. '` (' .. cq .. ' job ' .. cid .. ') ' .. why
        finish(pid, rec, K_DEAD, keep_dead_n, true)
        emit('dead', pid, rec, rec.err)
        code = 3
      else
        local s = 'f'
        if pol == 'i' then s = 'i' end
        redis.call('HSET', K_FDEPS, f, cjson.encode({ s = s, q = cq, i = cid, e = why }))
        code = 1
      end
      if code == 1 and redis.call('HINCRBY', K_FDEPS, pid .. '\0#', -1) <= 0 then
        -- Every child resolved: the outcomes go into the parent's record, for its handler.
        local kids = {}
        if type(rec.fw) == 'table' then
          local fs = {}
          for j, k in ipairs(rec.fw) do fs[j] = pid .. '\0' .. k end
          local vals = hmget(K_FDEPS, fs)
          for j, k in ipairs(rec.fw) do
            local ok, o = pcall(cjson.decode, vals[j] or '')
            if ok and type(o) == 'table' and o.s ~= 'i' then
              o.k = k
              kids[#kids + 1] = o
            end
          end
        end
        drop_deps(pid, rec)
        rec.fw = nil
        rec.fspec = nil
        rec.kids = kids
        if #kids == 0 then rec.kids = nil end
        redis.call('HSET', K_JOBS, pid, cjson.encode(rec))
        ready_add(pid, rec)
        wake()
        code = 2
      end
    end
    out[#out + 1] = code
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))
