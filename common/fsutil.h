/* Paths, folders, and outputs that appear only when complete (temporary name, then rename). */
#ifndef ICH_FSUTIL_H
#define ICH_FSUTIL_H

#include "check.h"

int path_exists(const char *path);
int path_is_dir(const char *path);
int path_is_file(const char *path);
/* Are two paths one existing file (a link, another spelling)? Compares device and inode. */
int path_same_file(const char *a, const char *b);
/* Create a folder and its parents; dies with EXIT_IO naming the folder on failure. */
void mkdir_p(const char *path);
/* mkdir_p that adds each folder it creates itself to made, outermost first: what to remove
 * again when the run leaves them empty (rmdir_created). */
void mkdir_p_created(const char *path, strlist_t *made);
/* Remove the folders mkdir_p_created made, innermost first, each only while it is empty. */
void rmdir_created(const strlist_t *made);
char *path_join(const char *dir, const char *name);
const char *path_basename(const char *path);
/* Basename without its last extension, as a new string. */
char *path_stem(const char *path);
/* Does the name end with ext (case-insensitive, ext with its dot: ".dcm")? */
int path_has_ext(const char *path, const char *ext);

/*
 * All regular files below dir, recursively, sorted by path; hidden entries are skipped.
 * Symbolic links are followed, except one leading back to a folder being walked (a loop).
 * walk_files warns about what it cannot follow; walk_files_report instead appends each such
 * path (an unreadable folder, a broken link, an entry it cannot stat) to problem_paths and
 * the reason to problem_reasons, in the same order.
 */
void walk_files(const char *dir, strlist_t *out);
void walk_files_report(const char *dir, strlist_t *out, strlist_t *problem_paths,
                       strlist_t *problem_reasons);
/* One path per line; blank lines and lines starting with '#' ignored. Dies with
 * EXIT_BAD_INPUT naming the file and the reason if unreadable. */
void read_list_file(const char *path, strlist_t *out);

/*
 * An output path checked before any work: one that names an existing folder or ends in '/'
 * dies with EXIT_USAGE ("OPTION PATH is a folder: name the output file, e.g. PATH/EXAMPLE").
 * option is how the command line gave it ("-o", "--scores"); example a file name or NULL.
 */
void output_path_check(const char *option, const char *path, const char *example);
/* An output folder checked before any work: one that exists and is not a folder dies with
 * EXIT_USAGE ("OPTION PATH exists and is not a folder"). */
void output_dir_check(const char *option, const char *path);
/*
 * An exclusive lock on an output folder for this process's life (the descriptor, to keep
 * open). When another process holds it: wait, saying so, or (wait 0) die with EXIT_BAD_INPUT.
 * program names both in the messages. A file system without locks: a warning, no lock.
 */
int folder_lock(const char *dir, int wait, const char *program);

/*
 * Temporary sibling of a final output: "DIR/.NAME.tmp-PID-N". The missing folders above
 * final_path are created first (dies with EXIT_IO naming final_path, the folder and the
 * reason). Registered so that SIGINT, SIGTERM and exit() remove it; commit renames it into
 * place and unregisters it.
 */
char *tmp_path_for(const char *final_path);
/* Create (or truncate) the temporary for writing: its descriptor. Dies with EXIT_IO
 * "cannot create FINAL: REASON", the reason the system gave. */
int tmp_create(const char *tmp_path, const char *final_path);
int tmp_commit(const char *tmp_path, const char *final_path); /* 0 ok, -1 errno set */
void tmp_discard(const char *tmp_path);
/*
 * Remove leftovers of killed runs in one folder: the temporaries ("DIR/.NAME.tmp-PID-N") whose
 * PID is no process on this host (kill(PID, 0) fails with ESRCH) or one that has exited and
 * awaits its parent (a zombie, as a writer killed under make or a shell is for a moment), so
 * that jobs writing into one folder at once keep each other's files. Returns how many it
 * removed.
 * Limits: the PID is only checked on this host and PID namespace. A folder that jobs on
 * several hosts (NFS) or containers write at once may lose a live writer's temporary when its
 * PID is free here: give such jobs separate folders, or sweep only where one writer runs. A
 * dead writer's PID taken by another process keeps its leftover until a later sweep.
 */
int tmp_sweep(const char *dir);
/* tmp_sweep of one output's temporaries only (".NAME.tmp-PID-N" beside final_path): for a
 * folder that holds other programs' files. */
int tmp_sweep_for(const char *final_path);

#endif
