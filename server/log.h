/* Logging: one line per event on stderr, with a UTC timestamp and a level. */
#ifndef WARREN_LOG_H
#define WARREN_LOG_H

enum log_level { WLOG_ERROR, WLOG_WARN, WLOG_INFO, WLOG_DEBUG };

void log_set_level(enum log_level level);
/* Parses "error", "warn", "info" or "debug". Returns 0, or -1 for anything else. */
int log_parse_level(const char *name, enum log_level *out);
int log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(WLOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(WLOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(WLOG_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_enabled(WLOG_DEBUG)) log_msg(WLOG_DEBUG, __VA_ARGS__); } while (0)

#endif
