/* Broker settings: defaults, overridden by the command line. */
#ifndef WARREN_CONFIG_H
#define WARREN_CONFIG_H

#include <stdint.h>

#include "server/log.h"

struct config {
    int port;              /* 5672 */
    char bind[64];         /* 127.0.0.1 */
    char data_dir[4096];   /* ./data */
    enum log_level log_level;
    uint16_t channel_max;  /* 2047 */
    uint32_t frame_max;    /* 131072 */
    uint16_t heartbeat;    /* 60 seconds; 0 = off */
    uint32_t consumer_timeout_ms; /* unacked deliveries older than this close their channel; 0 = off */
    uint64_t memory_limit_bytes;  /* --memory-limit SIZE; 0: memory_limit_percent of RAM */
    uint8_t memory_limit_percent; /* --memory-limit N% (default 40, RabbitMQ's watermark) */
};

void config_defaults(struct config *cfg);
/* Reads a --memory-limit value: "N%" of RAM (1-100), or a size of at least 1 MiB in bytes
 * or with a unit (K, KiB, M, MiB, G, GiB, T, TiB are powers of 1024; KB, MB, GB, TB of
 * 1000). Returns 0, or -1 if s is none of these. */
int config_parse_memory_limit(struct config *cfg, const char *s);
/* Parses argv into cfg. Returns 0 to run, 1 if --help/--version was printed (exit 0),
 * -1 after printing an error for bad arguments (exit 2). */
int config_parse_args(struct config *cfg, int argc, char **argv);

#define WARREN_VERSION "0.1.0"

#endif
