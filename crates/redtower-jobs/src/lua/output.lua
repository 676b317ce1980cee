-- OUTPUT: stores a job's progress or result, fenced by its lease.
-- Changes state (one field of the jobs hash). Idempotent under re-send: it sets the field to
-- the value the call carries if the lease still holds the job, so a re-send writes the same
-- value again (a handler's calls are sequential: each awaits its answer before the next, so a
-- re-send never lands after a later value). A lease that no longer holds the job (expired,
-- settled, removed) writes nothing.
-- Values live in the jobs hash under `p:<id>` (progress) and `r:<id>` (result); job ids are
-- numbers, so they never collide with a record's field. `meta` `out` marks that the queue has
-- some, so trimming deletes them with their job (see `drop_outputs` in common.lua).
-- ARGV: ev_max, kind ('p' | 'r'), id, fence, value. Returns 1 stored, 0 stale.
local kind, id, fence, value = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', K_LEASE, id) ~= fence then return 0 end
if redis.call('HEXISTS', K_JOBS, id) == 0 then return 0 end
redis.call('HSET', K_JOBS, kind .. ':' .. id, value)
redis.call('HSET', K_META, 'out', '1')
return 1
