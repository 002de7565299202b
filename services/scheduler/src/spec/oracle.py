# An independent oracle for the scheduler's daylight-saving behaviour: Python's zoneinfo, not
# chrono-tz, and no cron library. Reads cases as JSON on stdin, prints for each the window it
# checked and the instants (epoch seconds) a schedule must fire at:
# - a fixed time (second, minute, hour all single values) fires once per matching day: at its
#   instant, at the earlier one when the wall time occurs twice, and at the first instant after
#   the gap when it does not occur at all;
# - a wildcard-hour expression follows real time: every instant whose wall time matches.
import json, sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc

def transitions(zone, year):
    t = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    previous = t.astimezone(zone).utcoffset()
    found = []
    while t < end:
        t += timedelta(minutes=15)
        offset = t.astimezone(zone).utcoffset()
        if offset != previous:
            found.append(t)
            previous = offset
    return found

def fixed(zone, case, start, end):
    out = []
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        dow = (day.weekday() + 1) % 7
        if case["dow"] is None or dow in case["dow"]:
            wall = datetime(day.year, day.month, day.day, case["h"], case["m"], case["s"])
            first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            if first.astimezone(zone).replace(tzinfo=None) != wall:
                # In a gap: walk from before it to the first instant past the wall time.
                u = wall.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(second=0)
                while u.astimezone(zone).replace(tzinfo=None) < wall:
                    u += timedelta(minutes=1)
                first = u
            if start < first <= end:
                out.append(int(first.timestamp()))
        day += timedelta(days=1)
    return sorted(set(out))

def wildcard(zone, case, start, end):
    out = []
    u = start.replace(second=0) + timedelta(minutes=1)
    while u <= end:
        local = u.astimezone(zone)
        if case["kind"] == "every" and local.minute % case["step"] == 0:
            out.append(int(u.timestamp()))
        if case["kind"] == "hourly" and local.minute == case["m"]:
            out.append(int(u.timestamp()))
        u += timedelta(minutes=1)
    return out

results = []
for case in json.load(sys.stdin):
    zone = ZoneInfo(case["zone"])
    if case["kind"] == "fixed":
        windows = [(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))]
    else:
        windows = [(t - timedelta(hours=26), t + timedelta(hours=26))
                   for t in transitions(zone, 2026)]
    for start, end in windows:
        f = fixed if case["kind"] == "fixed" else wildcard
        results.append({
            "start": int(start.timestamp()),
            "end": int(end.timestamp()),
            "fires": f(zone, case, start, end),
        })
print(json.dumps(results))
