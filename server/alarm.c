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

/* The lowest memory.max on the way from this process's cgroup (v2) up to the root;
 * UINT64_MAX if none is set or there is no cgroup v2. */
static uint64_t cgroup_memory_max(void)
{
    char line[4096], path[4096 + 64];
    uint64_t lowest = UINT64_MAX;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return lowest;
    char *group = NULL;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "0::", 3) == 0) {
            group = line + 3;
            group[strcspn(group, "\n")] = 0;
            break;
        }
    fclose(f);
    while (group && *group) {
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", group);
        unsigned long long v;
        FILE *m = fopen(path, "r");
        if (m) {
            if (fscanf(m, "%llu", &v) == 1 && v < lowest)
                lowest = v;
            fclose(m);
        }
        char *slash = strrchr(group, '/');
        if (!slash)
            break;
        *slash = 0;
    }
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
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t cgroup = cgroup_memory_max();
    const char *of = "RAM";
    if (cgroup < ram) {
        ram = cgroup;
        of = "the cgroup's memory.max";
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
        conn_block_publishers(b, reason);
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
    return c->publisher && (alarm_reason(c->b) || persist_backlog_full(c->b));
}
