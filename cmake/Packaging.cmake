# The Debian package: `make package` (cpack -G DEB in the build directory).
#
# One package, `mirrorcast`: the four programs, the systemd units, the
# sysusers.d and tmpfiles.d entries for the mirrorcast account, example
# configurations under /etc/mirrorcast/ (conffiles), and the docs. Shared
# library dependencies come from dpkg-shlibdeps. Installing it makes the
# account and directories and starts nothing: a daemon needs keys and a
# config first (docs/operations.md).

set(MIRRORCAST_SYSTEMD_UNIT_DIR "/lib/systemd/system" CACHE PATH
    "where the package puts the systemd units (Debian 12: /lib/systemd/system)")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mirrorcast)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "mirrorcast developers")
set(MIRRORCAST_PACKAGE_MAINTAINER "mirrorcast developers <maintainers@mirrorcast.invalid>" CACHE STRING
    "Maintainer field of the .deb (set it to whoever ships the package)")
set(CPACK_PACKAGE_CONTACT "${MIRRORCAST_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "push mirroring for package repositories")
set(CPACK_PACKAGE_DESCRIPTION
    "mirrorcast pushes package-repository updates to mirrors the moment they\n\
are published. Release tooling publishes a signed event to a broker; each\n\
mirror's subscriber verifies it, fetches only what changed (librsync deltas\n\
or whole files), applies it atomically and acknowledges it, so the origin\n\
knows which mirror holds which version.")
# postinst makes the account with systemd-sysusers; the units need systemd.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

configure_file(${PROJECT_SOURCE_DIR}/deploy/package/conffiles.in
               ${PROJECT_BINARY_DIR}/package/conffiles @ONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/deploy/package/postinst
    ${PROJECT_SOURCE_DIR}/deploy/package/postrm
    ${PROJECT_BINARY_DIR}/package/conffiles)

# Files of the package besides the programs (their install() rules are next
# to their targets).
install(FILES deploy/systemd/mirrorcast-broker.service deploy/systemd/mirrorcast-subscriber@.service
        DESTINATION ${MIRRORCAST_SYSTEMD_UNIT_DIR})
install(FILES deploy/package/sysusers.conf DESTINATION lib/sysusers.d RENAME mirrorcast.conf)
install(FILES deploy/package/tmpfiles.conf DESTINATION lib/tmpfiles.d RENAME mirrorcast.conf)
install(FILES deploy/examples/broker.conf DESTINATION /etc/mirrorcast RENAME broker.conf.example)
install(FILES deploy/examples/subscriber.conf DESTINATION /etc/mirrorcast
        RENAME subscriber.conf.example)
install(FILES deploy/package/copyright README.md docs/operations.md docs/protocol.md
        docs/architecture.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

find_program(GZIP_PROGRAM gzip REQUIRED)

# Manual pages, made from each program's --help by help2man (so they never
# drift from the options), compressed as policy wants them.
find_program(HELP2MAN_PROGRAM help2man REQUIRED)
set(MIRRORCAST_MANPAGES)
foreach(prog_and_name
        "mirrorcast|administer a mirrorcast network: keys, status, recall, verify"
        "mirrorcast-broker|mirrorcast broker: accepts signed publishes and pushes them to mirrors"
        "mirrorcast-subscriber|mirrorcast subscriber: keeps one mirror tree at the broker's serial"
        "mirrorcast-publish|publish a repository tree's changes to a mirrorcast broker")
  string(REPLACE "|" ";" parts "${prog_and_name}")
  list(GET parts 0 prog)
  list(GET parts 1 name)
  set(page ${PROJECT_BINARY_DIR}/package/man/${prog}.1.gz)
  add_custom_command(
    OUTPUT ${page}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/package/man
    COMMAND ${HELP2MAN_PROGRAM} --no-info --no-discard-stderr --section 1 --name ${name}
            --output ${PROJECT_BINARY_DIR}/package/man/${prog}.1 $<TARGET_FILE:${prog}>
    COMMAND ${GZIP_PROGRAM} -9nf ${PROJECT_BINARY_DIR}/package/man/${prog}.1
    DEPENDS ${prog}
    VERBATIM)
  list(APPEND MIRRORCAST_MANPAGES ${page})
endforeach()
add_custom_target(mirrorcast_manpages ALL DEPENDS ${MIRRORCAST_MANPAGES})
install(FILES ${MIRRORCAST_MANPAGES} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)

# The Debian changelog, compressed as policy wants it (gzip -9n: no name, no
# time, so the package is reproducible).
add_custom_command(
  OUTPUT ${PROJECT_BINARY_DIR}/package/changelog.gz
  COMMAND ${GZIP_PROGRAM} -9nc ${PROJECT_SOURCE_DIR}/deploy/package/changelog >
          ${PROJECT_BINARY_DIR}/package/changelog.gz
  DEPENDS ${PROJECT_SOURCE_DIR}/deploy/package/changelog
  VERBATIM)
add_custom_target(mirrorcast_changelog ALL DEPENDS ${PROJECT_BINARY_DIR}/package/changelog.gz)
install(FILES ${PROJECT_BINARY_DIR}/package/changelog.gz DESTINATION ${CMAKE_INSTALL_DOCDIR})

include(CPack)
