-- WORK: settle finished attempts, promote due jobs, reclaim expired leases, fetch.
-- Changes state. Idempotent under re-send: KEYS[13] (`...:x:<request id>`, in the queue's hash
-- tag) is the request's replay record, keyed by an id the client chose before sending (random
-- per request, the same when it is re-sent). The first run stores its settlement codes and the
-- (id, token) of every job it leased, for `window_ms`; a re-sent request finds the record and
-- answers from it (the same codes, and the jobs whose lease that token still holds, with their
-- current records) without settling or fetching again. So a settle whose reply was lost is
-- reported as done by this lease, exactly once, and a lost fetch strands nothing: the re-send
-- hands over the same leases. Without the record (expired) a re-send is harmless too: its
-- settlements are fenced (stale) and it fetches new jobs; the old leases end after lease_ms.
-- Bad records (not JSON, a field out of range) bury that job only (dead, with the reason).
-- ARGV: ev_max, lease_ms, fetch_n, max_stalls, keep_done_n, keep_done_age_ms, keep_dead_n,
--       keep_dead_age_ms, n_settle, window_ms, then n_settle x (id, token, kind, a, b)
-- kind: c = complete (a job without a dedup key; a = its attempt, b = its name, as fetched),
--       u = complete (read the record; b = a flow child's result or ''), r = retry (a = delay_ms,
--       b = error),
--       f = fail (b = error), x = release,
--       d = delay for a rate limit, no attempt used (a = delay_ms, b = '1' when the whole queue
--           waits too: meta `hold`, the latest of such deadlines, so a re-send changes nothing)
-- KEYS[14..15]: a flow child's outbox (see flow.lua); KEYS[16..19]: the group keys (see
-- quota.lua). Queue limits (meta rl_n/rl_ms, conc, gconc)
-- bound the fetch after settling and reclaiming: the GCRA state `tat` only moves by the jobs
-- handed out, so a re-sent request (answered from its record) does not charge twice.
-- The record's `attempt` counts attempts that ended in a failure; a running or completed
-- attempt is not in it (a fetch does not rewrite the record, a completion keeps it as it is).
-- Returns { settled codes, { {id, token, record}, ... }, next_due_ms | -1, now_ms }
-- codes: 0 stale, 1 completed, 2 retrying, 3 dead, 4 released, 5 delayed (rate limited)
-- next_due_ms also covers a rate limit or queue hold: when the next start may fit.
local lease_ms = tonumber(ARGV[2])
local fetch_n = tonumber(ARGV[3])
local max_stalls = tonumber(ARGV[4])
local keep_done_n, keep_done_age = tonumber(ARGV[5]), tonumber(ARGV[6])
local keep_dead_n, keep_dead_age = tonumber(ARGV[7]), tonumber(ARGV[8])
local n_settle = tonumber(ARGV[9])
local window = ARGV[10]
local K_REPLAY = KEYS[13]
-- A flow child's outbox (see flow.lua).
K_FOUT, K_FMSG = KEYS[14], KEYS[15]
K_GF, K_GHELD, K_GACT, K_GJOB = KEYS[16], KEYS[17], KEYS[18], KEYS[19]

-- How long until the next scheduled job is due or the next lease ends (-1: none).
local function next_hint()
  local hint = -1
  local s = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
  if s[2] then hint = math.max(0, tonumber(s[2]) - now) end
  local a = redis.call('ZRANGE', K_ACTIVE, 0, 0, 'WITHSCORES')
  if a[2] then
    local h = math.max(0, tonumber(a[2]) - now)
    if hint < 0 or h < hint then hint = h end
  end
  return hint
end

if K_REPLAY then
  local prev = redis.call('GET', K_REPLAY)
  if prev then
    -- '<one digit per settlement>|<id> <token> <id> <token> ...'
    local bar = string.find(prev, '|', 1, true)
    if bar then
      local codes = {}
      for i = 1, bar - 1 do codes[i] = string.byte(prev, i) - 48 end
      local jobs, id = {}, nil
      for w in string.gmatch(string.sub(prev, bar + 1), '%S+') do
        if id == nil then
          id = w
        else
          if redis.call('HGET', K_LEASE, id) == w then
            local raw = redis.call('HGET', K_JOBS, id)
            if raw then jobs[#jobs + 1] = { id, w, raw } end
          end
          id = nil
        end
      end
      return { codes, jobs, n2s(next_hint()), now_s }
    end
  end
end

local codes = {}
-- Leases settled by this call, removed from the lease hash and the active set in one command
-- each after the loop; `settled` makes a second settle of the same id in this call stale, as
-- it would be if the lease were already gone.
-- Leases of the whole batch are read with one HMGET, and the records that are needed (not
-- for plain completions) with another: nothing in the loop writes the lease hash, and a
-- record is only written for its own (settled once) id.
local settled, settled_ids, done_batch = {}, {}, {}
local settle_ids, read_ids = {}, {}
for i = 0, n_settle - 1 do
  local id = ARGV[11 + i * 5]
  settle_ids[i + 1] = id
  if ARGV[13 + i * 5] ~= 'c' then read_ids[#read_ids + 1] = id end
end
local leases_now = hmget(K_LEASE, settle_ids)
local records_now = {}
if #read_ids > 0 then
  local raws = hmget(K_JOBS, read_ids)
  for i, id in ipairs(read_ids) do records_now[id] = raws[i] end
end
for i = 0, n_settle - 1 do
  local b = 11 + i * 5
  local id, tok, kind = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local code = 0
  if not settled[id] and leases_now[i + 1] == tok then
    settled[id] = true
    settled_ids[#settled_ids + 1] = id
    if kind == 'c' then
      -- No dedup key to drop and an unchanged record: only the done set changes, in one
      -- ZADD for the batch after the loop.
      if keep_done_n > 0 then
        done_batch[#done_batch + 1] = now_s
        done_batch[#done_batch + 1] = id
      else
        redis.call('HDEL', K_JOBS, id)
        drop_outputs({ id })
      end
      emit_completed(id, ARGV[b + 4], ARGV[b + 3])
      code = 1
    else
      local raw = records_now[id]
      local rec, why = nil, nil
      if raw then rec, why = decode(raw) end
      if raw and not rec then
        bury(id, raw, why, keep_dead_n)
        code = 3
      elseif rec then
        if kind == 'u' then
          rec.attempt = rec.attempt + 1
          finish(id, rec, K_DONE, keep_done_n, false, ARGV[b + 4])
          emit_completed(id, rec.name, rec.attempt)
          code = 1
        elseif kind == 'x' then
          ready_add(id, rec)
          wake()
          emit('released', id, rec, nil)
          code = 4
        elseif kind == 'd' then
          local delay = tonumber(ARGV[b + 3])
          if delay == nil or delay ~= delay or delay < 0 then delay = 0 end
          delay = math.min(delay, 9007199254740991 - now)
          if delay > 0 then sched_add(id, now + delay) else ready_add(id, rec); wake() end
          if ARGV[b + 4] == '1' then
            local held = tonumber(redis.call('HGET', K_META, 'hold')) or 0
            if now + delay > held then redis.call('HSET', K_META, 'hold', n2s(now + delay)) end
          end
          emit('released', id, rec, nil)
          code = 5
        else
          rec.attempt = rec.attempt + 1
          rec.started = started_of(tok) or cjson.null
          rec.err = ARGV[b + 4]
          local delay = tonumber(ARGV[b + 3])
          if kind == 'r' and rec.attempt < rec.max then
            redis.call('HSET', K_JOBS, id, cjson.encode(rec))
            -- A negative or absurd delay (not a number, beyond ~285 years) is clamped.
            if delay == nil or delay ~= delay or delay < 0 then delay = 0 end
            sched_add(id, now + math.min(delay, 9007199254740991 - now))
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
  end
  codes[#codes + 1] = code
end

if #settled_ids > 0 then
  multi('HDEL', K_LEASE, settled_ids)
  multi('ZREM', K_ACTIVE, settled_ids)
end
local group_woke = groups_done(settled_ids)
if #done_batch > 0 then multi('ZADD', K_DONE, done_batch) end
flush_completed()

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
    if raw then
      local rec, why = decode(raw)
      if rec then ready_add(id, rec) else bury(id, raw, why, keep_dead_n) end
    end
  end
end

-- Reclaim expired leases (bounded): back to ready without using an attempt, or dead after
-- too many stalls.
local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', n2s(now), 'LIMIT', 0, 100)
if groups_done(expired) then group_woke = true end
for _, id in ipairs(expired) do
  redis.call('ZREM', K_ACTIVE, id)
  local lost = redis.call('HGET', K_LEASE, id)
  redis.call('HDEL', K_LEASE, id)
  local raw = redis.call('HGET', K_JOBS, id)
  local rec, why = nil, nil
  if raw then rec, why = decode(raw) end
  if raw and not rec then
    bury(id, raw, why, keep_dead_n)
  elseif rec then
    rec.stalls = rec.stalls + 1
    -- The lost attempt's start (it does not count as an attempt).
    if lost then rec.started = started_of(lost) or rec.started end
    if rec.stalls > max_stalls then
      rec.err = 'lease lost ' .. rec.stalls .. ' times (worker crashed or too slow)'
      finish(id, rec, K_DEAD, keep_dead_n, true)
      if keep_dead_n > 0 then trim(K_DEAD, keep_dead_n, keep_dead_age) end
      emit('dead', id, rec, rec.err)
    else
      redis.call('HSET', K_JOBS, id, cjson.encode(rec))
      ready_add(id, rec)
      emit('stalled', id, rec, nil)
    end
  end
end

local jobs = {}
-- paused, hold, rl_n, rl_ms, conc, gconc, tat, vt
local M = redis.call('HMGET', K_META, 'paused', 'hold', 'rl_n', 'rl_ms', 'conc', 'gconc', 'tat', 'vt')
local limit_hint = -1
local want = fetch_n
if M[1] == '1' then want = 0 end
local hold = tonumber(M[2])
if want > 0 and hold and hold > now then
  want = 0
  limit_hint = hold - now
end
local conc = tonumber(M[5])
if conc and (#settled_ids > 0 or #expired > 0) and redis.call('ZCARD', K_READY) > 0 then
  -- Slots came free: wake a waiting worker (this one may not fetch).
  wake()
end
if want > 0 and conc then
  want = math.max(0, math.min(want, conc - redis.call('ZCARD', K_ACTIVE)))
end
-- GCRA in microseconds of Redis TIME: a burst of rl_n, then one start every rl_ms / rl_n.
local rl_n, rl_ms = tonumber(M[3]), tonumber(M[4])
local now_us, step, tat, period_us = nil, nil, nil, nil
if want > 0 and rl_n and rl_ms then
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  period_us = rl_ms * 1000
  step = period_us / rl_n
  tat = math.max(tonumber(M[7]) or 0, now_us)
  local fit = math.floor((now_us + period_us - tat) / step + 1e-9)
  if fit < want then
    want = math.max(0, fit)
    limit_hint = math.max(0, math.ceil((tat + math.max(want, 0) * step + step - period_us - now_us) / 1000))
  end
end
local gconc = tonumber(M[6])
if want > 0 then
  -- Fencing tokens for the whole batch from one INCR: '<batch>.<start ms>.<i>', with i in
  -- base 64 (built from characters: formatting a number per job costs more than the rest).
  local batch_s = n2s(redis.call('INCR', K_SEQ)) .. '.' .. now_s .. '.'
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
  local leases, active = {}, {}
  local vt = tonumber(M[8]) or 0
  local vt0 = vt
  local gjobs, gcount = {}, {}
  -- With a per-group limit, jobs of a full group are held and more are popped (bounded).
  for _ = 1, (gconc and 8 or 1) do
    local ask = want - #jobs
    local popped = redis.call('ZPOPMIN', K_READY, ask)
    if #popped == 0 then break end
    local ids, scores = {}, {}
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
      scores[#scores + 1] = tonumber(popped[i + 1])
    end
    local raws = hmget(K_JOBS, ids)
    for i, id in ipairs(ids) do
      local raw = raws[i]
      local turn = scores[i] % PRIO
      if turn > vt then vt = turn end
      if raw then
        local g = nil
        if gconc and string.find(raw, '"g":', 1, true) then
          local rec = decode(raw)
          if rec and type(rec.g) == 'string' then g = rec.g end
        end
        if g and (gcount[g] or tonumber(redis.call('HGET', K_GACT, g)) or 0) >= gconc then
          redis.call('ZADD', K_GHELD, 0, held_member(g, id, scores[i]))
        else
          if g then
            gcount[g] = (gcount[g] or tonumber(redis.call('HGET', K_GACT, g)) or 0) + 1
            gjobs[#gjobs + 1] = id
            gjobs[#gjobs + 1] = g
          end
          local tok = tok_of(next_tok)
          next_tok = next_tok + 1
          leases[#leases + 1] = id
          leases[#leases + 1] = tok
          active[#active + 1] = until_s
          active[#active + 1] = id
          jobs[#jobs + 1] = { id, tok, raw }
        end
      end
    end
    if #jobs >= want or #popped < ask * 2 then break end
  end
  if #leases > 0 then
    multi('HSET', K_LEASE, leases)
    multi('ZADD', K_ACTIVE, active)
  end
  if #gjobs > 0 then
    multi('HSET', K_GJOB, gjobs)
    for g, c in pairs(gcount) do redis.call('HSET', K_GACT, g, c) end
  end
  if vt > vt0 then
    redis.call('HSET', K_META, 'vt', n2s(vt))
    redis.call('ZREMRANGEBYSCORE', K_GF, '-inf', n2s(vt))
  end
  if tat and #jobs > 0 then
    redis.call('HSET', K_META, 'tat', string.format('%.3f', tat + #jobs * step))
  end
  if #jobs >= fetch_n and redis.call('ZCARD', K_READY) > 0 then wake() end
elseif #due > 0 or #expired > 0 or group_woke then
  wake()
end

if K_REPLAY and (n_settle > 0 or #jobs > 0) then
  -- Built with table.concat (cheaper than cjson; it is read only when a request is re-sent).
  local parts = { table.concat(codes), '|' }
  for _, j in ipairs(jobs) do
    parts[#parts + 1] = j[1]
    parts[#parts + 1] = ' '
    parts[#parts + 1] = j[2]
    parts[#parts + 1] = ' '
  end
  redis.call('SET', K_REPLAY, table.concat(parts), 'PX', window)
end

local hint = next_hint()
if limit_hint >= 0 and (hint < 0 or limit_hint < hint) then hint = limit_hint end
return { codes, jobs, n2s(hint), now_s }
