-- ARGV: ev_max, lease_ms, fetch_n, max_stalls, keep_done_n, keep_done_age_ms, keep_dead_n,
--       keep_dead_age_ms, n_settle, then n_settle x (id, token, kind, delay_ms, error)
-- kind: c = complete, r = retry, f = fail, x = release
-- Returns { settled codes, { {id, token, record, age_ms}, ... }, next_due_ms | -1 }
-- codes: 0 stale, 1 completed, 2 retrying, 3 dead, 4 released
local lease_ms = tonumber(ARGV[2])
local fetch_n = tonumber(ARGV[3])
local max_stalls = tonumber(ARGV[4])
local keep_done_n, keep_done_age = tonumber(ARGV[5]), tonumber(ARGV[6])
local keep_dead_n, keep_dead_age = tonumber(ARGV[7]), tonumber(ARGV[8])
local n_settle = tonumber(ARGV[9])

-- What a completion needs of a record (name and attempt for the event; no dedup key to drop),
-- read without decoding the JSON. Safe for the same reason as `start_record`: outside the
-- top-level keys every quote is escaped. Nil (decode it) when the record has a dedup key or a
-- name with escapes.
local function completed_fields(raw)
  if not string.find(raw, '"uniq":null', 1, true) then return nil end
  local name = string.match(raw, '"name":"([^"\\]*)"')
  local attempt = string.match(raw, '"attempt":(%d+)')
  if name and attempt then return { name = name, attempt = attempt, light = true } end
  return nil
end

local codes = {}
-- Leases settled by this call, removed from the lease hash and the active set in one command
-- each after the loop; `settled` makes a second settle of the same id in this call stale, as
-- it would be if the lease were already gone.
-- Leases and records of the whole batch are read with one HMGET each: nothing in the loop
-- writes the lease hash, and a record is only written for its own (settled once) id.
local settled, settled_ids, done_batch = {}, {}, {}
local settle_ids = {}
for i = 0, n_settle - 1 do settle_ids[i + 1] = ARGV[10 + i * 5] end
local leases_now = hmget(K_LEASE, settle_ids)
local records_now = hmget(K_JOBS, settle_ids)
for i = 0, n_settle - 1 do
  local b = 10 + i * 5
  local id, tok, kind = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local code = 0
  if not settled[id] and leases_now[i + 1] == tok then
    settled[id] = true
    settled_ids[#settled_ids + 1] = id
    local raw = records_now[i + 1]
    if raw then
      local rec = (kind == 'c' and completed_fields(raw)) or cjson.decode(raw)
      if kind == 'c' then
        if rec.light and keep_done_n > 0 then
          -- No dedup key and an unchanged record: only the done set changes, in one ZADD
          -- for the batch after the loop.
          done_batch[#done_batch + 1] = now_s
          done_batch[#done_batch + 1] = id
        else
          finish(id, rec, K_DONE, keep_done_n, false)
        end
        emit('completed', id, rec, nil)
        code = 1
      elseif kind == 'x' then
        rec.attempt = rec.attempt - 1
        redis.call('HSET', K_JOBS, id, cjson.encode(rec))
        ready_add(id, rec)
        wake()
        emit('released', id, rec, nil)
        code = 4
      else
        rec.err = ARGV[b + 4]
        if kind == 'r' and rec.attempt < rec.max then
          redis.call('HSET', K_JOBS, id, cjson.encode(rec))
          sched_add(id, now + tonumber(ARGV[b + 3]))
          emit('retrying', id, rec, rec.err)
          code = 2
        else
          finish(id, rec, K_DEAD, keep_dead_n, true)
          emit('dead', id, rec, rec.err)
          code = 3
        end
      end
    end
  end
  codes[#codes + 1] = code
end

if #settled_ids > 0 then
  multi('HDEL', K_LEASE, settled_ids)
  multi('ZREM', K_ACTIVE, settled_ids)
end
if #done_batch > 0 then multi('ZADD', K_DONE, done_batch) end

if n_settle > 0 then
  if keep_done_n > 0 then trim(K_DONE, keep_done_n, keep_done_age) end
  if keep_dead_n > 0 then trim(K_DEAD, keep_dead_n, keep_dead_age) end
end

-- Promote due scheduled jobs (bounded).
local due = redis.call('ZRANGEBYSCORE', K_SCHED, '-inf', n2s(now), 'LIMIT', 0, 1000)
if #due > 0 then
  for _, id in ipairs(due) do
    redis.call('ZREM', K_SCHED, id)
    local raw = redis.call('HGET', K_JOBS, id)
    if raw then ready_add(id, cjson.decode(raw)) end
  end
end

-- Reclaim expired leases (bounded): back to ready without using an attempt, or dead after
-- too many stalls.
local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', n2s(now), 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', K_ACTIVE, id)
  redis.call('HDEL', K_LEASE, id)
  local raw = redis.call('HGET', K_JOBS, id)
  if raw then
    local rec = cjson.decode(raw)
    rec.stalls = rec.stalls + 1
    if rec.stalls > max_stalls then
      rec.err = 'lease lost ' .. rec.stalls .. ' times (worker crashed or too slow)'
      finish(id, rec, K_DEAD, keep_dead_n, true)
      if keep_dead_n > 0 then trim(K_DEAD, keep_dead_n, keep_dead_age) end
      emit('dead', id, rec, rec.err)
    else
      rec.attempt = rec.attempt - 1
      redis.call('HSET', K_JOBS, id, cjson.encode(rec))
      ready_add(id, rec)
      emit('stalled', id, rec, nil)
    end
  end
end

local jobs = {}
if fetch_n > 0 and redis.call('HGET', K_META, 'paused') ~= '1' then
  local popped = redis.call('ZPOPMIN', K_READY, fetch_n)
  if #popped > 0 then
    -- Fencing tokens for the whole batch from one INCR: '<batch>.<i>', with i in base 64
    -- (built from characters: formatting a number per job costs more than the rest of it).
    local batch_s = n2s(redis.call('INCR', K_SEQ)) .. '.'
    local b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    local function tok_of(i)
      local out = ''
      repeat
        local d = i % 64
        out = string.sub(b64, d + 1, d + 1) .. out
        i = (i - d) / 64
      until i == 0
      return batch_s .. out
    end
    local next_tok = 0
    local until_s = n2s(now + lease_ms)
    local records, leases, active = {}, {}, {}
    local ids = {}
    for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
    local raws = hmget(K_JOBS, ids)
    for i, id in ipairs(ids) do
      local raw = raws[i]
      if raw then
        raw = start_record(raw)
        local tok = tok_of(next_tok)
        next_tok = next_tok + 1
        records[#records + 1] = id
        records[#records + 1] = raw
        leases[#leases + 1] = id
        leases[#leases + 1] = tok
        active[#active + 1] = until_s
        active[#active + 1] = id
        -- The wait in ms as an integer reply (no number formatting).
        local created = tonumber(string.match(raw, '"created":(%d+)')) or now
        jobs[#jobs + 1] = { id, tok, raw, now - created }
      end
    end
    if #records > 0 then
      multi('HSET', K_JOBS, records)
      multi('HSET', K_LEASE, leases)
      multi('ZADD', K_ACTIVE, active)
    end
  end
  if #popped >= fetch_n * 2 and redis.call('ZCARD', K_READY) > 0 then wake() end
elseif #due > 0 or #expired > 0 then
  wake()
end

local hint = -1
local s = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
if s[2] then hint = math.max(0, tonumber(s[2]) - now) end
local a = redis.call('ZRANGE', K_ACTIVE, 0, 0, 'WITHSCORES')
if a[2] then
  local h = math.max(0, tonumber(a[2]) - now)
  if hint < 0 or h < hint then hint = h end
end
return { codes, jobs, n2s(hint) }
