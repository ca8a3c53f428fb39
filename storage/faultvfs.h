/* Fault injection for tests: when the environment variable WARREN_FAULT_FILE names a file,
 * SQLite's writes consult it. If it contains "full", writes and syncs fail as on a full
 * disk; "ioerr", as on an I/O error; anything else, or no file, lets them through. */
#ifndef WARREN_STORAGE_FAULTVFS_H
#define WARREN_STORAGE_FAULTVFS_H

/* Installs the fault-injecting VFS as SQLite's default if WARREN_FAULT_FILE is set.
 * Returns 0, or -1 after logging why. */
int faultvfs_install_from_env(void);

#endif
