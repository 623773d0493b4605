/* Parses an xl domain file with Xen's own parser (libxlutil, as `xl create`
 * does) and prints what it read, one "key=value" per line; disks go through
 * xlu_disk_parse, the parser xl uses for disk specs. Built by the Xen
 * driver's tests; exit 1 on any parse error. */
#include <stdio.h>
#include <libxl.h>
#include <libxlutil.h>

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: xlparse FILE\n");
		return 2;
	}
	XLU_Config *cfg = xlu_cfg_init(stderr, argv[1]);
	if (!cfg || xlu_cfg_readfile(cfg, argv[1])) {
		fprintf(stderr, "xlparse: %s does not parse\n", argv[1]);
		return 1;
	}
	static const char *strings[] = {"name", "type", "kernel", "ramdisk", "extra",
		"bootloader", "on_poweroff", "on_reboot", "on_crash", NULL};
	for (int i = 0; strings[i]; i++) {
		const char *v;
		if (!xlu_cfg_get_string(cfg, strings[i], &v, 1))
			printf("%s=%s\n", strings[i], v);
	}
	static const char *longs[] = {"memory", "maxmem", "vcpus", NULL};
	for (int i = 0; longs[i]; i++) {
		long v;
		if (!xlu_cfg_get_long(cfg, longs[i], &v, 1))
			printf("%s=%ld\n", longs[i], v);
	}
	XLU_ConfigList *list;
	int n;
	if (!xlu_cfg_get_list(cfg, "vif", &list, &n, 1))
		for (int i = 0; i < n; i++)
			printf("vif=%s\n", xlu_cfg_get_listitem(list, i));
	if (!xlu_cfg_get_list(cfg, "disk", &list, &n, 1))
		for (int i = 0; i < n; i++) {
			const char *spec = xlu_cfg_get_listitem(list, i);
			libxl_device_disk disk;
			libxl_device_disk_init(&disk);
			if (xlu_disk_parse(cfg, 1, &spec, &disk)) {
				fprintf(stderr, "xlparse: disk %s does not parse\n", spec);
				return 1;
			}
			printf("disk=vdev:%s format:%s backend:%s rw:%d target:%s\n", disk.vdev,
				libxl_disk_format_to_string(disk.format),
				libxl_disk_backend_to_string(disk.backend), disk.readwrite,
				disk.pdev_path);
			libxl_device_disk_dispose(&disk);
		}
	xlu_cfg_destroy(cfg);
	return 0;
}
