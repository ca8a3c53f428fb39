#include "server/alarm.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "server/broker.h"
#include "server/connection.h"
#include "server/log.h"
#include "server/message.h"
#include "server/persist.h"

#define MIB (1024.0 * 1024.0)
/* While the memory alarm is on, memory is also looked at on this timer, so the alarm
 * clears even if the turn that freed the last messages had nothing else to do. */
#define MEMORY_RECHECK_MS 200

/* Values at or above this mean "no limit" (cgroup v1 writes a huge page-rounded number). */
#define CGROUP_UNLIMITED (1ull << 62)

/* The lowest limit in files named `file` under `root`, from `group` up to root itself. */
static uint64_t lowest_limit(const char *root, char *group, const char *file)
{
    char path[4096 + 128];
    uint64_t lowest = UINT64_MAX;
    for (;;) {
        snprintf(path, sizeof path, "%s%s/%s", root, group, file);
        unsigned long long v;
        FILE *f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%llu", &v) == 1 && v < lowest && v < CGROUP_UNLIMITED)
                lowest = v;
            fclose(f);
        }
        char *slash = strrchr(group, '/');
        if (!slash || !*group)
            break;
        *slash = 0; /* up one level; "" is the mount root, looked at last */
    }
    return lowest;
}

/* True if the comma-separated list names this controller. */
static bool has_controller(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == 0))
            return true;
    return false;
}

/* The memory limit of this process's cgroup: cgroup v2's memory.max, or v1's
 * memory.limit_in_bytes, the lowest on the way up; UINT64_MAX if none is set. */
static uint64_t cgroup_memory_max(void)
{
    char line[4096];
    uint64_t lowest = UINT64_MAX;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return lowest;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *controllers = strchr(line, ':'), *group = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!group)
            continue;
        *group++ = 0;
        controllers++;
        uint64_t v = UINT64_MAX;
        if (*controllers == 0) /* "0::/path": cgroup v2 */
            v = lowest_limit("/sys/fs/cgroup", group, "memory.max");
        else if (has_controller(controllers, "memory")) /* "N:memory:/path": v1 */
            v = lowest_limit("/sys/fs/cgroup/memory", group, "memory.limit_in_bytes");
        if (v < lowest)
            lowest = v;
    }
    fclose(f);
    return lowest;
}

void alarm_init(struct broker *b)
{
    const struct config *cfg = &b->cfg;
    if (cfg->memory_limit_bytes) {
        b->memory_limit = cfg->memory_limit_bytes;
        log_info("memory limit: %.1f MiB of messages", b->memory_limit / MIB);
        return;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : UINT64_MAX;
    uint64_t cgroup = cgroup_memory_max();
    const char *of = "RAM";
    if (cgroup < ram) {
        ram = cgroup;
        of = "the cgroup's memory limit";
    }
    b->memory_limit = ram / 100 * cfg->memory_limit_percent;
    log_info("memory limit: %.1f MiB of messages (%u%% of %.1f MiB, %s)", b->memory_limit / MIB,
             (unsigned)cfg->memory_limit_percent, ram / MIB, of);
}

void alarm_free(struct broker *b)
{
    if (b->memory_ev)
        event_free(b->memory_ev);
    b->memory_ev = NULL;
}

static void on_memory_recheck(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    alarm_check_memory(arg);
}

static void changed(struct broker *b)
{
    const char *reason = alarm_reason(b);
    if (reason)
        conn_notify_blocked(b, reason);
    else
        conn_resume_publishers(b);
    broker_wake(b);
}

void alarm_set_disk(struct broker *b, bool on)
{
    if (b->disk_alarm == on)
        return;
    b->disk_alarm = on;
    changed(b);
}

void alarm_check_memory(struct broker *b)
{
    uint64_t used = message_memory(), limit = b->memory_limit;
    if (!b->memory_alarm && used >= limit) {
        b->memory_alarm = true;
        log_warn("memory alarm: messages hold %.1f MiB, the limit is %.1f MiB; publishers are "
                 "blocked until it falls below %.1f MiB", used / MIB, limit / MIB,
                 limit / MIB * ALARM_MEMORY_CLEAR_PERCENT / 100);
        if (!b->memory_ev)
            b->memory_ev = event_new(b->base, -1, EV_PERSIST, on_memory_recheck, b);
        struct timeval tv = { 0, MEMORY_RECHECK_MS * 1000 };
        event_add(b->memory_ev, &tv);
        changed(b);
    } else if (b->memory_alarm && used < limit / 100 * ALARM_MEMORY_CLEAR_PERCENT) {
        b->memory_alarm = false;
        log_info("memory alarm cleared: messages hold %.1f MiB", used / MIB);
        event_del(b->memory_ev);
        changed(b);
    }
}

const char *alarm_reason(const struct broker *b)
{
    if (b->disk_alarm)
        return "low on disk";
    if (b->memory_alarm)
        return "low on memory";
    return NULL;
}

bool alarm_holds_publisher(const struct connection *c)
{
    if (c->state != CONN_OPEN) /* a closing connection is read for its close-ok */
        return false;
    return c->alarm_blocked || (c->publisher && persist_backlog_full(c->b));
}
