-- Argo CD health check for tuneloop.dev/ModelDeployment (Lua 5.1, as Argo CD's gopher-lua runs it).
--
-- A ModelDeployment is a blue-green rollout shaped like an Argo Rollout, and maps the same way:
--   no status yet                        -> Progressing  the operator has not picked it up
--   observedGeneration < generation      -> Progressing  the operator has not seen the latest spec
--   Pending, Progressing                 -> Progressing  preview coming up or analysis running
--   Paused                               -> Suspended    the preview passed and waits for a promote
--                                                        (like a paused Rollout)
--   Healthy                              -> Healthy      the active colour serves the desired revision
--   Degraded, Aborted                    -> Degraded     analysis failed or the rollout was aborted;
--                                                        status.message says why
--   any other phase                      -> Unknown      (a phase this script does not know yet)
local hs = {}

local function str(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local function withMessage(default, message)
  if message ~= "" then
    return message
  end
  return default
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to see generation " .. str(generation)
  return hs
end

local phase = status.phase
local message = str(status.message)

if phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = withMessage("healthy", message)
  return hs
end

if phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = withMessage(phase, message)
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "waiting for promote"
  if message ~= "" then
    hs.message = hs.message .. ": " .. message
  end
  return hs
end

if phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = withMessage("degraded", message)
  return hs
end

if phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = "aborted: " .. withMessage("rollout aborted", message)
  return hs
end

hs.status = "Unknown"
hs.message = "unrecognised phase " .. str(phase) .. ": " .. message
return hs
