/* Resource alarms, as RabbitMQ has them. While the disk alarm (store writes fail) or the
 * memory alarm (messages hold more memory than --memory-limit) is on:
 *  - open connections that have published get connection.blocked with the alarm's reason
 *    ("low on disk", "low on memory") if they understand it, when the alarm starts;
 *  - a connection is held (not read) from the moment it completes a publish, so a message
 *    is never left half read; connections that do not publish are read as usual, so
 *    consumers drain the queues;
 *  - when no alarm is on any more, held connections are read again and those told
 *    connection.blocked get connection.unblocked. */
#ifndef WARREN_ALARM_H
#define WARREN_ALARM_H

#include <stdbool.h>
#include <stdint.h>

struct broker;
struct connection;

/* The memory alarm clears below this share of the limit, so that a queue draining at the
 * line does not block and unblock its publishers on every message. */
#define ALARM_MEMORY_CLEAR_PERCENT 90

/* Works out the memory limit (a share of RAM means of the machine's RAM, or of the
 * cgroup's limit when that is lower: v2 memory.max or v1 memory.limit_in_bytes) and logs
 * it. */
void alarm_init(struct broker *b);
void alarm_free(struct broker *b);
/* Disk alarm on or off (the store's writes fail or work again). */
void alarm_set_disk(struct broker *b, bool on);
/* Compares message memory with the limit and raises or clears the memory alarm; called
 * after each read from a publisher and at the end of each loop turn. */
void alarm_check_memory(struct broker *b);
/* The reason of the alarm that is on ("low on disk" first), or NULL. */
const char *alarm_reason(const struct broker *b);
/* True if c must not be read now: it is open and published during an alarm, or it has
 * published and the store's writer is too far behind (persist_backlog_full). */
bool alarm_holds_publisher(const struct connection *c);

#endif
