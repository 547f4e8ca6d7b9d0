-- Argo CD health check for tuneloop.dev/FineTuneJob (Lua 5.1, as Argo CD's gopher-lua runs it).
--
-- A FineTuneJob is a run-to-completion resource, like a batch Job:
--   no status yet                        -> Progressing  the operator has not picked it up
--   (observedGeneration is the generation the job started with: a spec changed later is not
--    applied, by design, and condition SpecChangeIgnored says so; so it is not a health signal here)
--   Pending, Queued, Validating, Augmenting,
--   Training, Evaluating, Exporting,
--   Registering                          -> Progressing  work under way or waiting for Kueue to admit its
--                                                        Job (status.message)
--   Suspended                            -> Suspended    spec.suspend holds it; false resumes it
--   Succeeded, gate passed or no gate    -> Healthy      the run finished and its adapter may be promoted
--   Succeeded, gate failed               -> Degraded     the job did its work (phase Succeeded: failing
--                                                        the gate is a result, not an error) but the
--                                                        adapter was rejected: nothing was promoted, and
--                                                        an app that shows Healthy would hide that; the
--                                                        message is the gate's (condition Ready is False
--                                                        with reason GateFailed, Stalled True, for kstatus)
--   Failed                               -> Degraded     status.message says why
--   any other phase                      -> Unknown      (a phase this script does not know yet)
local hs = {}

local function str(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local phase = status.phase
local message = str(status.message)

if phase == "Suspended" then
  hs.status = "Suspended"
  if message ~= "" then
    hs.message = message
  else
    hs.message = "suspended: spec.suspend is true"
  end
  return hs
end

if phase == "Pending" or phase == "Queued" or phase == "Validating" or phase == "Augmenting"
    or phase == "Training" or phase == "Evaluating" or phase == "Exporting" or phase == "Registering" then
  hs.status = "Progressing"
  if message ~= "" then
    hs.message = phase .. ": " .. message
  else
    hs.message = phase
  end
  return hs
end

if phase == "Succeeded" then
  -- The gate's verdict: the GatePassed condition, else status.evaluation.gate.
  local passed = nil
  local gateMessage = ""
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == "GatePassed" then
        if condition.status == "True" then
          passed = true
        elseif condition.status == "False" then
          passed = false
        end
        gateMessage = str(condition.message)
      end
    end
  end
  if passed == nil and status.evaluation ~= nil and status.evaluation.gate ~= nil then
    passed = status.evaluation.gate.passed == true
    gateMessage = str(status.evaluation.gate.message)
  end
  hs.status = "Healthy"
  if passed == true then
    hs.message = "succeeded; gate passed"
  elseif passed == false then
    hs.status = "Degraded"
    hs.message = "succeeded, not promoted; gate failed"
  else
    hs.message = "succeeded; not evaluated"
  end
  -- The operator's gate messages start with "gate passed: " or "gate failed: ": not said twice.
  local verdict = string.match(gateMessage, "^gate %a+: (.*)$")
  if verdict ~= nil then
    gateMessage = verdict
  end
  if gateMessage ~= "" then
    hs.message = hs.message .. ": " .. gateMessage
  elseif message ~= "" then
    hs.message = hs.message .. " (" .. message .. ")"
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  if message ~= "" then
    hs.message = message
  else
    hs.message = "failed"
  end
  return hs
end

hs.status = "Unknown"
hs.message = "unrecognised phase " .. str(phase) .. ": " .. message
return hs
