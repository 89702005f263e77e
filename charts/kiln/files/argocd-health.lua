-- Argo CD health check for kiln.dev/ModelOptimization.
-- Healthy: Ready=True for the current generation. Degraded: Stalled=True (needs the user).
-- Progressing: anything else, including a Job waiting in a Kueue queue.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Kiln to pick up the resource"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for Kiln to act on generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled: " .. tostring(stalled.reason))
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Failed")
  return hs
end

local reconciling = condition("Reconciling")
hs.status = "Progressing"
if reconciling ~= nil and reconciling.reason == "Queued" then
  hs.message = "Queued: " .. describe(reconciling, "waiting for Kueue to admit the Job")
else
  hs.message = describe(reconciling, "Phase " .. tostring(obj.status.phase or "Pending"))
end
return hs
